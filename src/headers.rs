//! Which request headers stay with an event. Kept headers are journaled, shown by
//! `GET /v1/events/{seq}` and forwarded as `http_*` AMQP headers, so nothing that lets a
//! reader act as the provider is kept: no signature or token header of any scheme, no
//! credentials, no transport headers. A source can drop more (`drop_headers`) or keep
//! only a list (`keep_headers`), but never keep a signature or secret header.
//!
//! The same rule is applied when an event is read ([`crate::sources::Sources::header_policy`]),
//! so events journaled before it (or under another config) are shown and forwarded
//! without those headers too.

use std::collections::HashSet;
use std::sync::LazyLock;

use http::HeaderName;

use crate::verify::{Scheme, SIGNATURE_HEADERS};

/// Hop-by-hop and transport headers, never kept with an event.
const TRANSPORT: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "expect",
];

/// Credentials, whatever the scheme.
const CREDENTIALS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// Whether no source ever keeps `name` (lowercase): transport, credentials, and every
/// built-in scheme's signature or token header. Each header of each request is looked
/// up here, in one set rather than three lists compared name by name (27 comparisons
/// for a header that is kept).
pub fn never_kept(name: &str) -> bool {
    static NEVER_KEPT: LazyLock<HashSet<&str, foldhash::fast::FixedState>> = LazyLock::new(|| {
        TRANSPORT
            .iter()
            .chain(CREDENTIALS)
            .chain(SIGNATURE_HEADERS)
            .copied()
            .collect()
    });
    NEVER_KEPT.contains(name)
}

/// One source's rule for its kept headers.
#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    /// Dropped besides those [`never_kept`]: the header a configurable scheme (`hmac`,
    /// `token`) reads its signature or token from, and the source's `drop_headers`.
    drop: Vec<HeaderName>,
    /// `keep_headers`: when set, only these are kept.
    keep: Option<Vec<HeaderName>>,
}

impl HeaderPolicy {
    /// The rule for a source of `scheme` with its `drop_headers` and `keep_headers`;
    /// an error names the key and the header at fault.
    pub fn new(
        scheme: &Scheme,
        drop_headers: Option<&[String]>,
        keep_headers: Option<&[String]>,
    ) -> Result<HeaderPolicy, String> {
        let mut drop = match scheme {
            Scheme::Hmac(generic) => vec![generic.header.clone()],
            Scheme::Token(token) => vec![token.header.clone()],
            _ => Vec::new(),
        };
        for name in drop_headers.unwrap_or_default() {
            drop.push(parse("drop_headers", name)?);
        }
        let keep = match keep_headers {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| {
                        let parsed = parse("keep_headers", name)?;
                        if never_kept(parsed.as_str()) || drop.contains(&parsed) {
                            return Err(format!(
                                "keep_headers: `{name}` carries a signature, a secret or transport \
                                 information and is never kept"
                            ));
                        }
                        Ok(parsed)
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            ),
        };
        Ok(HeaderPolicy { drop, keep })
    }

    /// Whether a header named `name` (any case) stays with the event.
    pub fn keeps(&self, name: &str) -> bool {
        // Only a stored name written otherwise than in lowercase is copied.
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.keeps_lowercase(&name.to_ascii_lowercase())
        } else {
            self.keeps_lowercase(name)
        }
    }

    /// [`Self::keeps`] for a request's header. A `HeaderName` is lowercase, so its name
    /// is not looked through for capitals (a few hundred instructions a request).
    pub fn keeps_header(&self, name: &HeaderName) -> bool {
        self.keeps_lowercase(name.as_str())
    }

    fn keeps_lowercase(&self, name: &str) -> bool {
        !never_kept(name)
            && !self.drop.iter().any(|d| d.as_str() == name)
            && self
                .keep
                .as_ref()
                .is_none_or(|keep| keep.iter().any(|k| k.as_str() == name))
    }

    /// The headers of a stored event that may be shown or forwarded.
    pub fn filter<'a>(
        &'a self,
        headers: &'a [(String, String)],
    ) -> impl Iterator<Item = &'a (String, String)> + 'a {
        headers.iter().filter(|(name, _)| self.keeps(name))
    }
}

fn parse(key: &str, name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{key}: `{name}` is not a header name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn signatures_credentials_and_transport_are_never_kept() {
        let policy = HeaderPolicy::default();
        for name in [
            "X-Hub-Signature-256",
            "stripe-signature",
            "Authorization",
            "cookie",
            "proxy-authorization",
            "x-gitlab-token",
            "webhook-signature",
            "svix-signature",
            "host",
        ] {
            assert!(!policy.keeps(name), "{name}");
        }
        // Every never-kept name, stored in either case or as a request's `HeaderName`.
        for name in TRANSPORT.iter().chain(CREDENTIALS).chain(SIGNATURE_HEADERS) {
            assert!(!policy.keeps(name), "{name}");
            assert!(!policy.keeps(&name.to_ascii_uppercase()), "{name}");
            assert!(
                !policy.keeps_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        assert!(policy.keeps("X-GitHub-Event"));
        assert!(policy.keeps("content-type"));
        let event = HeaderName::from_bytes(b"X-GitHub-Event").unwrap();
        assert!(policy.keeps_header(&event));
    }

    #[test]
    fn a_source_drops_more_or_keeps_only_a_list() {
        let scheme = Scheme::Stripe;
        let policy = HeaderPolicy::new(&scheme, Some(&names(&["X-Internal"])), None).unwrap();
        assert!(!policy.keeps("x-internal"));
        assert!(policy.keeps("user-agent"));
        let only = HeaderPolicy::new(&scheme, None, Some(&names(&["x-request-id", "User-Agent"])))
            .unwrap();
        assert!(only.keeps("user-agent"));
        assert!(only.keeps("X-Request-Id"));
        assert!(!only.keeps("x-other"));
        assert!(only.keeps_header(&http::header::USER_AGENT));
        assert!(!only.keeps_header(&http::header::ACCEPT));
        assert!(!policy.keeps_header(&HeaderName::from_static("x-internal")));
        let none = HeaderPolicy::new(&scheme, None, Some(&[])).unwrap();
        assert!(!none.keeps("user-agent"), "an empty list keeps nothing");
    }

    #[test]
    fn keep_headers_cannot_bring_back_a_signature() {
        for name in [
            "stripe-signature",
            "X-Hub-Signature",
            "cookie",
            "not a name",
        ] {
            let e = HeaderPolicy::new(&Scheme::Stripe, None, Some(&names(&[name]))).unwrap_err();
            assert!(e.starts_with("keep_headers: "), "{e}");
        }
    }

    #[test]
    fn configurable_schemes_drop_their_own_header() {
        let token = Scheme::Token(crate::verify::Token {
            header: HeaderName::from_static("x-webhook-token"),
        });
        let policy = HeaderPolicy::new(&token, None, None).unwrap();
        assert!(!policy.keeps("X-Webhook-Token"));
        let e = HeaderPolicy::new(&token, None, Some(&names(&["x-webhook-token"]))).unwrap_err();
        assert!(e.contains("never kept"), "{e}");
    }
}
