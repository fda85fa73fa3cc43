//! Replay defence that does not depend on unsigned headers. GitHub signs the body but
//! not `X-GitHub-Delivery`, so a captured body with its signature can be posted again
//! under a new delivery id, which dedup on the id alone takes for a new event. Where a
//! source's signature does not cover its id, [`replay_key`] names what the signature
//! does cover; the journal remembers it beside the id, in the same step and for the same
//! window, so such a re-post is a `duplicate` of the first event.

use sha2::{Digest, Sha256};

use super::{header, hmac, twilio, Incoming, Scheme};
use crate::locator::Locator;

/// Whether `scheme`'s signature covers the id that `id` locates (or there is nothing to
/// tie a re-post to: a token, or no check at all).
pub fn covers_id(scheme: &Scheme, id: &Locator) -> bool {
    match (scheme, id) {
        // Nothing signed; such a source is as safe as its token (or not at all).
        (Scheme::Token(_) | Scheme::None, _) => true,
        (Scheme::Hmac(generic), _) => generic.signs_id(id),
        // A field of the body, or the body's own hash: every other scheme signs the
        // body (Twilio through its parameters or `bodySHA256`).
        (_, Locator::Json(_) | Locator::Form(_) | Locator::None) => true,
        (_, Locator::FirstOf(all)) => all.iter().all(|l| covers_id(scheme, l)),
        // Standard Webhooks signs `webhook-id` (or `svix-id`); GitLab with a `whsec_`
        // secret too (its id is then `webhook-id`, see `admit`), and with a token it
        // signs nothing.
        (Scheme::StandardWebhooks, Locator::Header(name)) => {
            matches!(name.as_str(), "webhook-id" | "svix-id")
        }
        (Scheme::Gitlab, Locator::Header(_)) => true,
        // Twitch signs the message id with the timestamp and the body.
        (Scheme::Twitch, Locator::Header(name)) => name == "twitch-eventsub-message-id",
        (_, Locator::Header(_)) => false,
    }
}

/// What a re-post of this verified request would repeat, for a source whose signature
/// does not cover its id: the SHA-256 of the signed body, or of the signature itself
/// where the signed bytes are not the body as sent (Twilio signs the URL and sorted
/// parameters, so reordered parameters verify the same; the generic scheme signs its
/// template). `None` when there is no signature to go by.
///
/// `signature` is the MAC that verified, where the scheme answers one that alone can
/// verify the body (GitHub without SHA-1): a MAC under a secret names the body as surely
/// as its hash, and the key is then the hash of those 32 bytes rather than of the whole
/// body (`mac:`; GitHub's bodies run to tens of kilobytes). Either way the key depends
/// on nothing a re-post can change: the decoded MAC is the same whatever the case of its
/// digits, and the same whichever of the source's secrets are configured beside the one
/// it was made with.
pub fn replay_key(
    scheme: &Scheme,
    incoming: &Incoming,
    signature: Option<&[u8; 32]>,
) -> Option<String> {
    match scheme {
        Scheme::Token(_) | Scheme::None | Scheme::Gitlab => None,
        Scheme::Twilio(_) => {
            header(&incoming.headers, twilio::SIGNATURE).map(|v| digest(SIGNED, v.as_bytes()))
        }
        Scheme::Hmac(generic) => {
            signature_of(generic, incoming).map(|v| digest(SIGNED, v.as_bytes()))
        }
        Scheme::Github(_) => Some(match signature {
            Some(mac) => digest(MAC, mac),
            None => digest(SIGNED, &incoming.body),
        }),
        _ => Some(digest(SIGNED, &incoming.body)),
    }
}

/// The replay key an event with the key `key` and body `body` had before `mac:` keys
/// (2026-12-06): the body's hash. A journal whose events hold that form looks a re-post
/// up under it too, until they have left the dedup window (see the journal's
/// `earlier_replay_keys_until`). `None` for keys of any other form.
pub fn earlier_form(key: &str, body: &[u8]) -> Option<String> {
    key.starts_with(MAC).then(|| digest(SIGNED, body))
}

/// The prefix of a key made from what was signed, or from the signature as sent.
const SIGNED: &str = "signed:";
/// The prefix of a key made from the MAC that verified.
const MAC: &str = "mac:";

/// `prefix` and the SHA-256 of `bytes` in hex.
fn digest(prefix: &str, bytes: &[u8]) -> String {
    let mut hex = [0; 64];
    // 32 bytes always fit in 64 hex digits.
    let _ = hex::encode_to_slice(Sha256::digest(bytes), &mut hex);
    let mut key = String::with_capacity(prefix.len() + hex.len());
    key.push_str(prefix);
    // Hex digits are ASCII, so always UTF-8.
    key.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    key
}

fn signature_of<'a>(generic: &hmac::Generic, incoming: &'a Incoming) -> Option<&'a str> {
    header(&incoming.headers, generic.header.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Github;

    fn incoming(body: &[u8], headers: &[(&str, &str)]) -> Incoming {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Incoming {
            method: http::Method::POST,
            uri: "/hooks/x".parse().unwrap(),
            headers: map,
            body: bytes::Bytes::copy_from_slice(body),
            received_at: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn which_ids_the_signature_covers() {
        let github = Scheme::Github(Github::default());
        let delivery = Locator::Header(http::HeaderName::from_static("x-github-delivery"));
        assert!(
            !covers_id(&github, &delivery),
            "GitHub's delivery id is unsigned"
        );
        assert!(covers_id(&github, &Locator::Json("/id".into())));
        assert!(covers_id(&github, &Locator::None), "a content hash id");
        assert!(covers_id(&Scheme::Stripe, &Locator::Json("/id".into())));
        let webhook_id = Locator::Header(http::HeaderName::from_static("webhook-id"));
        assert!(covers_id(&Scheme::StandardWebhooks, &webhook_id));
        let shopify = Scheme::Shopify.defaults().id;
        assert!(!covers_id(&Scheme::Shopify, &shopify));
        assert!(!covers_id(&Scheme::Linear, &Scheme::Linear.defaults().id));
    }

    #[test]
    fn the_key_follows_what_is_signed_not_the_unsigned_headers() {
        let github = Scheme::Github(Github::default());
        let a = incoming(b"{\"a\":1}", &[("x-github-delivery", "one")]);
        let b = incoming(b"{\"a\":1}", &[("x-github-delivery", "two")]);
        let c = incoming(b"{\"a\":2}", &[("x-github-delivery", "one")]);
        assert_eq!(replay_key(&github, &a, None), replay_key(&github, &b, None));
        assert_ne!(replay_key(&github, &a, None), replay_key(&github, &c, None));
        // The journal keeps these keys: a form, once written, is never made differently.
        let body_key = "signed:015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862";
        assert_eq!(replay_key(&github, &a, None).unwrap(), body_key);
        assert_eq!(replay_key(&Scheme::Gitlab, &a, None), None);

        // With the MAC that verified: its hash, whatever the unsigned headers say.
        let mac = [7u8; 32];
        let from_mac = replay_key(&github, &a, Some(&mac)).unwrap();
        assert_eq!(from_mac, replay_key(&github, &b, Some(&mac)).unwrap());
        assert_eq!(
            from_mac,
            "mac:4bb06f8e4e3a7715d201d573d0aa423762e55dabd61a2c02278fa56cc6d294e0"
        );
        assert_ne!(from_mac, replay_key(&github, &a, Some(&[8u8; 32])).unwrap());
        // Only GitHub answers a MAC; the others keep their forms.
        assert_eq!(
            replay_key(&Scheme::Shopify, &a, Some(&mac)).unwrap(),
            body_key
        );
        // A key of the MAC form has the body's key as its earlier form; others none.
        assert_eq!(
            earlier_form(&from_mac, b"{\"a\":1}").as_deref(),
            Some(body_key)
        );
        assert_eq!(earlier_form(body_key, b"{\"a\":1}"), None);
    }
}
