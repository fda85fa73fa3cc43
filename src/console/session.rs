//! Console sessions: who signed in with the admin token, and the CSRF token each of
//! their forms carries.
//!
//! Sessions live in memory only: a restart signs everyone out, which is the safe side
//! for an operator's tool. Each lasts [`LIFETIME`] from sign-in (no sliding renewal, so a
//! stolen cookie is worth half a day at most). The sign-in form itself needs a CSRF token
//! too, so a visitor who has not signed in gets a session that is not signed in, for
//! [`ANONYMOUS_LIFETIME`]; signing in replaces it with a new one (a cookie planted
//! before sign-in is worth nothing after). At most [`MAX_SESSIONS`] are kept; beyond
//! that the oldest not signed in goes first. The store is keyed by the SHA-256 of the
//! cookie value, so neither a lookup's timing nor a memory dump gives a cookie away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::gateway::Clock;
use crate::verify::mac::same_token;

/// How long a session lasts from sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long a session that has not signed in lasts (the sign-in form's).
pub const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(3600);
/// The most sessions kept at once.
pub const MAX_SESSIONS: usize = 1000;

/// A one-time message shown on the next page a session sees (after a redirect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    pub text: String,
    pub error: bool,
    /// A link shown after the text: where and what it says.
    pub link: Option<(String, String)>,
    /// A value shown apart from the text, for copying (a new subscription's secret).
    pub code: Option<String>,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Flash {
        Flash {
            text: text.into(),
            error: false,
            link: None,
            code: None,
        }
    }

    pub fn error(text: impl Into<String>) -> Flash {
        Flash {
            error: true,
            ..Flash::ok(text)
        }
    }

    pub fn with_link(mut self, href: String, label: String) -> Flash {
        self.link = Some((href, label));
        self
    }

    pub fn with_code(mut self, code: String) -> Flash {
        self.code = Some(code);
        self
    }
}

struct Session {
    csrf: String,
    started_ms: u64,
    signed_in: bool,
    flash: Option<Flash>,
}

/// One request's session: the key to find it again, and its CSRF token.
#[derive(Clone, Debug)]
pub struct Visit {
    key: [u8; 32],
    pub csrf: String,
    pub signed_in: bool,
}

impl Visit {
    /// Whether a form's `csrf` field is this session's token.
    pub fn csrf_matches(&self, given: &str) -> bool {
        same_token(given.as_bytes(), self.csrf.as_bytes())
    }
}

pub struct Sessions {
    by_key: Mutex<HashMap<[u8; 32], Session>>,
    clock: Arc<dyn Clock>,
}

/// 32 bytes from the operating system's random source, as hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    hex::encode(bytes)
}

fn key_of(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    pub fn new(clock: Arc<dyn Clock>) -> Sessions {
        Sessions {
            by_key: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn now_ms(&self) -> u64 {
        crate::unix_ms(self.clock.now())
    }

    fn expired(&self, session: &Session, now_ms: u64) -> bool {
        let lifetime = if session.signed_in {
            LIFETIME
        } else {
            ANONYMOUS_LIFETIME
        };
        now_ms.saturating_sub(session.started_ms) >= lifetime.as_millis() as u64
    }

    /// Starts a session; answers the cookie value that names it, and the visit.
    pub fn start(&self, signed_in: bool) -> (String, Visit) {
        let cookie = random_token();
        let key = key_of(&cookie);
        let csrf = random_token();
        let now_ms = self.now_ms();
        let mut sessions = self.by_key.lock().expect("sessions lock");
        sessions.retain(|_, s| !self.expired(s, now_ms));
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| (s.signed_in, s.started_ms))
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            key,
            Session {
                csrf: csrf.clone(),
                started_ms: now_ms,
                signed_in,
                flash: None,
            },
        );
        (
            cookie,
            Visit {
                key,
                csrf,
                signed_in,
            },
        )
    }

    /// The live session a cookie value names, if any; an expired one is forgotten.
    pub fn find(&self, cookie: &str) -> Option<Visit> {
        let key = key_of(cookie);
        let now_ms = self.now_ms();
        let mut sessions = self.by_key.lock().expect("sessions lock");
        let session = sessions.get(&key)?;
        if self.expired(session, now_ms) {
            sessions.remove(&key);
            return None;
        }
        Some(Visit {
            key,
            csrf: session.csrf.clone(),
            signed_in: session.signed_in,
        })
    }

    pub fn end(&self, visit: &Visit) {
        self.by_key
            .lock()
            .expect("sessions lock")
            .remove(&visit.key);
    }

    /// Keeps a message for the next page this session sees.
    pub fn flash(&self, visit: &Visit, flash: Flash) {
        if let Some(session) = self
            .by_key
            .lock()
            .expect("sessions lock")
            .get_mut(&visit.key)
        {
            session.flash = Some(flash);
        }
    }

    pub fn take_flash(&self, visit: &Visit) -> Option<Flash> {
        self.by_key
            .lock()
            .expect("sessions lock")
            .get_mut(&visit.key)?
            .flash
            .take()
    }

    /// How many sessions are kept (expired ones included until they are next looked at).
    pub fn len(&self) -> usize {
        self.by_key.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `Set-Cookie` value for a session: never readable by scripts, never sent by another
/// site's request, `Secure` when the admin listener speaks TLS.
pub fn cookie(name: &str, value: &str, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes a cookie.
pub fn removal(name: &str, secure: bool) -> String {
    format!(
        "{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn read_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A clock the test moves.
    struct Hands(AtomicU64);

    impl Clock for Hands {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_expires() {
        let hands = Arc::new(Hands(AtomicU64::new(1_000_000)));
        let sessions = Sessions::new(hands.clone());
        let (cookie, visit) = sessions.start(true);
        assert_eq!(cookie.len(), 64);
        let found = sessions.find(&cookie).expect("a live session");
        assert!(found.csrf_matches(&visit.csrf));
        assert!(!found.csrf_matches("guess"));
        assert!(sessions.find("not-a-session").is_none());

        hands
            .0
            .fetch_add(LIFETIME.as_millis() as u64 - 1, Ordering::SeqCst);
        assert!(sessions.find(&cookie).is_some(), "one ms short of expiry");
        hands.0.fetch_add(1, Ordering::SeqCst);
        assert!(sessions.find(&cookie).is_none(), "expired");
        assert!(sessions.is_empty(), "an expired session is forgotten");
    }

    #[test]
    fn a_session_not_signed_in_lasts_an_hour() {
        let hands = Arc::new(Hands(AtomicU64::new(0)));
        let sessions = Sessions::new(hands.clone());
        let (cookie, visit) = sessions.start(false);
        assert!(!visit.signed_in);
        assert!(!sessions.find(&cookie).unwrap().signed_in);
        hands
            .0
            .fetch_add(ANONYMOUS_LIFETIME.as_millis() as u64, Ordering::SeqCst);
        assert!(sessions.find(&cookie).is_none());
    }

    #[test]
    fn sign_out_ends_the_session_and_flashes_show_once() {
        let sessions = Sessions::new(Arc::new(crate::gateway::SystemClock));
        let (cookie, visit) = sessions.start(true);
        sessions.flash(&visit, Flash::ok("done"));
        assert_eq!(sessions.take_flash(&visit), Some(Flash::ok("done")));
        assert_eq!(sessions.take_flash(&visit), None);
        sessions.end(&visit);
        assert!(sessions.find(&cookie).is_none());
    }

    #[test]
    fn the_store_is_bounded_and_the_oldest_goes_first() {
        let hands = Arc::new(Hands(AtomicU64::new(0)));
        let sessions = Sessions::new(hands.clone());
        let (first, _) = sessions.start(true);
        let (second, _) = sessions.start(true);
        for _ in 0..MAX_SESSIONS + 5 {
            hands.0.fetch_add(1, Ordering::SeqCst);
            sessions.start(false);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(
            sessions.find(&first).is_some() && sessions.find(&second).is_some(),
            "sign-in forms never push out those signed in"
        );
        for _ in 0..MAX_SESSIONS {
            sessions.start(true);
        }
        assert!(sessions.find(&first).is_none(), "the oldest goes");
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let plain = cookie("s", "v", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(cookie("s", "v", true).ends_with("; Secure"));
        assert!(removal("s", false).contains("Max-Age=0"));
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, "a=1; s=two; b=3".parse().unwrap());
        assert_eq!(read_cookie(&headers, "s"), Some("two"));
        assert_eq!(read_cookie(&headers, "c"), None);
    }
}
