//! `broker.url`: one address, or a list of a RabbitMQ cluster's nodes in the order they
//! are tried. Each is a secret reference (`env:`, `file:` or a literal), since an AMQP
//! URL carries a password; what is printed of them is only where they come from.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::secret::{Secret, SecretRef};

#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrls {
    refs: Vec<SecretRef>,
    /// Written as a list: messages then name an address as `broker.url[i]`.
    listed: bool,
}

impl BrokerUrls {
    /// One address, as `url = "…"` is written.
    pub fn one(reference: SecretRef) -> BrokerUrls {
        BrokerUrls {
            refs: vec![reference],
            listed: false,
        }
    }

    pub fn refs(&self) -> &[SecretRef] {
        &self.refs
    }

    /// The key that names the `i`th address in messages.
    pub fn key(&self, i: usize) -> String {
        if self.listed {
            format!("broker.url[{i}]")
        } else {
            "broker.url".to_string()
        }
    }

    /// Reads every address, in order. The error names the key and where it looked,
    /// never a value.
    pub fn resolve(&self) -> Result<Vec<Secret>, String> {
        self.refs
            .iter()
            .enumerate()
            .map(|(i, r)| r.resolve().map_err(|e| format!("{}: {e}", self.key(i))))
            .collect()
    }
}

impl fmt::Debug for BrokerUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SecretRef's Debug shows `literal` for a literal URL, never the URL itself.
        f.debug_list().entries(&self.refs).finish()
    }
}

impl<'de> Deserialize<'de> for BrokerUrls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UrlsVisitor)
    }
}

struct UrlsVisitor;

impl<'de> Visitor<'de> for UrlsVisitor {
    type Value = BrokerUrls;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AMQP URL, or a list of them (a cluster's nodes)")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<BrokerUrls, E> {
        Ok(BrokerUrls::one(SecretRef::from(text.to_string())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BrokerUrls, A::Error> {
        let mut refs = Vec::new();
        while let Some(text) = seq.next_element::<String>()? {
            refs.push(SecretRef::from(text));
        }
        if refs.is_empty() {
            return Err(de::Error::custom(
                "broker.url is an empty list: name at least one node",
            ));
        }
        Ok(BrokerUrls { refs, listed: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        url: BrokerUrls,
    }

    fn parse(text: &str) -> Result<BrokerUrls, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.url)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn one_address_or_a_list_in_order() {
        let one = parse(r#"url = "env:AMQP""#).unwrap();
        assert_eq!(one.refs(), [SecretRef::Env("AMQP".into())]);
        assert_eq!(one.key(0), "broker.url");

        let list =
            parse(r#"url = ["env:NODE1", "file:/run/node2", "amqp://g:pw@n3:5672/%2f"]"#).unwrap();
        assert_eq!(
            list.refs(),
            [
                SecretRef::Env("NODE1".into()),
                SecretRef::File("/run/node2".into()),
                SecretRef::Literal("amqp://g:pw@n3:5672/%2f".into()),
            ]
        );
        assert_eq!(list.key(2), "broker.url[2]");
        // The literal's password is not in its Debug.
        assert!(!format!("{list:?}").contains("pw"), "{list:?}");
    }

    #[test]
    fn an_empty_list_and_other_types_are_refused() {
        let empty = parse("url = []").unwrap_err();
        assert!(empty.contains("at least one node"), "{empty}");
        let number = parse("url = 5672").unwrap_err();
        assert!(
            number.contains("an AMQP URL, or a list of them"),
            "{number}"
        );
        let nested = parse("url = [[\"a\"]]").unwrap_err();
        assert!(!nested.is_empty());
    }

    #[test]
    fn resolution_names_the_address_at_fault_but_no_value() {
        std::env::set_var("HOOKGATE_TEST_NODE_A", "amqp://u:secret-a@a:5672/%2f");
        let list =
            parse(r#"url = ["env:HOOKGATE_TEST_NODE_A", "env:HOOKGATE_TEST_NODE_UNSET"]"#).unwrap();
        let err = list.resolve().unwrap_err();
        assert_eq!(
            err,
            "broker.url[1]: environment variable HOOKGATE_TEST_NODE_UNSET is not set"
        );
        let one = parse(r#"url = "env:HOOKGATE_TEST_NODE_A""#).unwrap();
        assert_eq!(
            one.resolve().unwrap()[0].expose(),
            b"amqp://u:secret-a@a:5672/%2f"
        );
    }
}
