//! Which events a subscription receives (SPEC §9): a list of `SOURCE:TYPE` patterns,
//! e.g. `github:push`, `stripe:invoice.*`, `*:*.deleted`, `*:*`. An event matches the
//! list when it matches any one pattern.
//!
//! The rules, chosen to be the simple globs Svix and Hookdeck users know:
//!
//! - A pattern is split at its first `:`; a pattern without one is an error. Source names
//!   never hold a `:`, so a type may (`zoom:meeting:x` is source `zoom`, type `meeting:x`).
//! - `*` matches any run of characters, dots included, and the empty run:
//!   `stripe:invoice.*` matches `invoice.paid` and `invoice.payment.failed`, and
//!   `*:*.deleted` matches `repo.deleted` but not `deleted`.
//! - `?` is refused rather than taken literally, so that nobody expects it to be a
//!   wildcard; there are no character classes (`[` is an ordinary character).
//! - Matching is case-sensitive, as sources and event types are.
//! - An event without a type matches only where the pattern's type is `*` (say
//!   `github:*` or `*:*`): such an event has no type that `x.*` could describe.
//!
//! This runs in the journal's committer for every accepted event and every subscription,
//! so a parsed pattern keeps its literal pieces and matching allocates nothing; a glob
//! with `n` stars is matched by `n` left-to-right substring searches, which is linear in
//! the event type for the short patterns people write.

use std::fmt;

/// The parsed `events` list of one subscription.
#[derive(Clone, PartialEq, Eq)]
pub struct Patterns {
    patterns: Vec<Pattern>,
    /// A `*:*` in the list: every event matches, without looking.
    everything: bool,
}

#[derive(Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    source: Glob,
    event_type: Glob,
}

/// One side of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Glob {
    /// `*` (or `**`…): anything, and also "no type".
    Any,
    /// No `*`: the whole text, exactly.
    Exact(String),
    /// At least one star: `first` must start the text, `last` end it (either may be
    /// empty, when the glob starts or ends with `*`), and the `middle` pieces appear in
    /// between, in order.
    Stars {
        first: String,
        middle: Vec<String>,
        last: String,
    },
}

impl Patterns {
    /// Parses a subscription's `events` list; the error names the pattern at fault.
    pub fn parse(list: &[String]) -> Result<Patterns, String> {
        if list.is_empty() {
            return Err(
                "the list of event patterns is empty; use [\"*:*\"] for every event".into(),
            );
        }
        let patterns = list
            .iter()
            .map(|text| Pattern::parse(text))
            .collect::<Result<Vec<_>, _>>()?;
        let everything = patterns
            .iter()
            .any(|p| p.source == Glob::Any && p.event_type == Glob::Any);
        Ok(Patterns {
            patterns,
            everything,
        })
    }

    /// Whether an event from `source` of type `event_type` (`None`: the event has none)
    /// matches any pattern.
    pub fn matches(&self, source: &str, event_type: Option<&str>) -> bool {
        self.everything
            || self.patterns.iter().any(|p| {
                p.source.matches(source)
                    && match event_type {
                        Some(t) => p.event_type.matches(t),
                        None => p.event_type == Glob::Any,
                    }
            })
    }

    /// The patterns as written, in order.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.text.as_str())
    }
}

impl fmt::Debug for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.texts()).finish()
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| format!("event pattern `{text}` {why}");
        if text.trim() != text {
            return Err(bad("has spaces around it"));
        }
        let (source, event_type) = text.split_once(':').ok_or_else(|| {
            bad("has no `:`; write SOURCE:TYPE, e.g. `github:push` or `stripe:*`")
        })?;
        if source.is_empty() || event_type.is_empty() {
            return Err(bad("needs both a SOURCE and a TYPE (use `*` for any)"));
        }
        if !source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'))
        {
            return Err(bad(
                "has a SOURCE that no source name can match (names are letters, digits, `-`, `_` and `.`; `*` is the wildcard)",
            ));
        }
        if event_type.contains('?') {
            return Err(bad("uses `?`, which is not a wildcard here; only `*` is"));
        }
        if event_type.chars().any(char::is_control) {
            return Err(bad("has a control character in its TYPE"));
        }
        Ok(Pattern {
            text: text.to_string(),
            source: Glob::new(source),
            event_type: Glob::new(event_type),
        })
    }
}

impl Glob {
    fn new(text: &str) -> Glob {
        if !text.is_empty() && text.bytes().all(|b| b == b'*') {
            return Glob::Any;
        }
        let (Some(first_star), Some(last_star)) = (text.find('*'), text.rfind('*')) else {
            return Glob::Exact(text.to_string());
        };
        // Stars side by side match what one star does: the empty pieces between them go.
        Glob::Stars {
            first: text[..first_star].to_string(),
            middle: text[first_star..last_star]
                .split('*')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            last: text[last_star + 1..].to_string(),
        }
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(exact) => exact == text,
            Glob::Stars {
                first,
                middle,
                last,
            } => {
                // The two anchored ends must fit without overlapping.
                if text.len() < first.len() + last.len()
                    || !text.starts_with(first.as_str())
                    || !text.ends_with(last.as_str())
                {
                    return false;
                }
                // Each middle piece at its leftmost place after the previous one: taking
                // the leftmost leaves the most room for the rest, so this finds a match
                // whenever there is one.
                let mut free = &text[first.len()..text.len() - last.len()];
                for piece in middle {
                    match free.find(piece.as_str()) {
                        Some(at) => free = &free[at + piece.len()..],
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Patterns {
        Patterns::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn error(text: &str) -> String {
        Patterns::parse(&[text.to_string()]).unwrap_err()
    }

    #[test]
    fn the_spec_examples() {
        let p = patterns(&["github:push", "stripe:invoice.*", "*:*.deleted"]);
        assert!(p.matches("github", Some("push")));
        assert!(!p.matches("github", Some("pushed")));
        assert!(!p.matches("github", Some("pull_request")));
        assert!(p.matches("stripe", Some("invoice.paid")));
        assert!(p.matches("stripe", Some("invoice.payment.failed")));
        assert!(!p.matches("stripe", Some("invoice")));
        assert!(!p.matches("stripe", Some("customer.created")));
        assert!(p.matches("shopify", Some("products.deleted")));
        assert!(p.matches("stripe", Some("customer.subscription.deleted")));
        assert!(!p.matches("shopify", Some("deleted")));
        assert!(!p.matches("shopify", Some("products.deleted.not")));
    }

    #[test]
    fn star_star_takes_everything_even_untyped_events() {
        let p = patterns(&["*:*"]);
        assert!(p.matches("a", Some("b")));
        assert!(p.matches("a", None));
        assert!(p.matches("a", Some("")));
    }

    #[test]
    fn an_untyped_event_matches_only_a_star_type() {
        assert!(patterns(&["github:*"]).matches("github", None));
        assert!(patterns(&["github:**"]).matches("github", None));
        assert!(!patterns(&["github:*"]).matches("gitlab", None));
        assert!(!patterns(&["github:push"]).matches("github", None));
        assert!(!patterns(&["github:*.*"]).matches("github", None));
        assert!(!patterns(&["*:x*"]).matches("github", None));
    }

    #[test]
    fn a_star_matches_any_run_including_dots_and_nothing() {
        let p = patterns(&["s:a*b"]);
        assert!(p.matches("s", Some("ab")));
        assert!(p.matches("s", Some("a.x.y.b")));
        assert!(!p.matches("s", Some("a.x.y.bc")));
        let p = patterns(&["s:*.created.*"]);
        assert!(p.matches("s", Some("x.created.y")));
        assert!(p.matches("s", Some(".created.")));
        assert!(!p.matches("s", Some("created.y")));
        let p = patterns(&["s:a*b*c"]);
        assert!(p.matches("s", Some("abc")));
        assert!(p.matches("s", Some("a_b_b_c")));
        assert!(p.matches("s", Some("abcbc")));
        assert!(!p.matches("s", Some("acb")));
    }

    #[test]
    fn anchors_do_not_overlap() {
        // `aba` starts with `ab` and ends with `ba`, but they share the middle `b`.
        assert!(!patterns(&["s:ab*ba"]).matches("s", Some("aba")));
        assert!(patterns(&["s:ab*ba"]).matches("s", Some("abba")));
        assert!(!patterns(&["s:a*a"]).matches("s", Some("a")));
        assert!(patterns(&["s:a*a"]).matches("s", Some("aa")));
    }

    #[test]
    fn sources_take_globs_too() {
        let p = patterns(&["billing-*:paid", "*hub:ping"]);
        assert!(p.matches("billing-eu", Some("paid")));
        assert!(p.matches("billing-", Some("paid")));
        assert!(!p.matches("billing", Some("paid")));
        assert!(p.matches("github", Some("ping")));
        assert!(!p.matches("github", Some("push")));
    }

    #[test]
    fn matching_is_case_sensitive_and_literal() {
        let p = patterns(&["github:Push", "s:a[b]+c.d"]);
        assert!(!p.matches("github", Some("push")));
        assert!(!p.matches("GitHub", Some("Push")));
        assert!(p.matches("s", Some("a[b]+c.d")));
        assert!(!p.matches("s", Some("ab+c.d")));
        assert!(!p.matches("s", Some("a[b]+cxd")));
    }

    #[test]
    fn the_type_is_split_at_the_first_colon() {
        let p = patterns(&["zoom:meeting:*"]);
        assert!(p.matches("zoom", Some("meeting:started")));
        assert!(!p.matches("zoom", Some("meeting.started")));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(
            error("push").contains("`push` has no `:`"),
            "{}",
            error("push")
        );
        assert!(error(":push").contains("both a SOURCE and a TYPE"));
        assert!(error("github:").contains("both a SOURCE and a TYPE"));
        assert!(error("git hub:push").contains("SOURCE"));
        assert!(error(" github:push").contains("spaces"));
        assert!(error("github:pu?h").contains("`?`"));
        assert!(error("github:a\nb").contains("control"));
        assert!(Patterns::parse(&[]).unwrap_err().contains("empty"));
        let list = ["github:push".to_string(), "nope".to_string()];
        assert!(Patterns::parse(&list).unwrap_err().contains("`nope`"));
    }

    #[test]
    fn long_types_stay_cheap() {
        // The worst case for a naive backtracking glob: many stars and a near miss.
        let p = patterns(&["s:*a*a*a*a*a*a*a*a*a*a*b"]);
        let text = "a".repeat(100_000);
        let start = std::time::Instant::now();
        assert!(!p.matches("s", Some(&text)));
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
        assert!(p.matches("s", Some(&format!("{text}b"))));
    }

    #[test]
    fn texts_come_back_as_written() {
        let p = patterns(&["a:b", "*:*"]);
        assert_eq!(p.texts().collect::<Vec<_>>(), ["a:b", "*:*"]);
        assert_eq!(format!("{p:?}"), r#"["a:b", "*:*"]"#);
    }
}
