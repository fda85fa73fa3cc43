//! One journaled event as the live stream sends it (SPEC §11): `id: SEQ`, `event: TYPE`
//! (`unknown` without one) and `data:` the summary of `GET /v1/events/{seq}` plus
//! `payload`, on one line; rendered once, for every client. And the per-client filter.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::admin::SummaryView;
use crate::journal::Summary;

/// One journaled event, rendered once as a server-sent event.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub source: String,
    pub event_type: Option<String>,
    /// `id: SEQ`, `event: TYPE`, `data: {summary + payload}` and the blank line.
    pub text: Bytes,
}

#[derive(Serialize)]
struct StreamView<'a> {
    #[serde(flatten)]
    summary: SummaryView<'a>,
    payload: Option<Box<RawValue>>,
}

impl Event {
    /// `payload` is the normalised JSON; `None` (a damaged event) and anything that is
    /// not JSON show as `null`.
    pub fn render(summary: &Summary, payload: Option<&[u8]>) -> Event {
        let view = StreamView {
            summary: SummaryView::from(summary),
            payload: payload.and_then(one_line),
        };
        let data = serde_json::to_string(&view).expect("plain JSON");
        let name = match summary.event_type.as_deref() {
            None | Some("") => "unknown".to_string(),
            // A line break would end the field and let a payload forge SSE fields.
            Some(t) => t.replace(['\r', '\n'], " "),
        };
        let text = format!("id: {}\nevent: {name}\ndata: {data}\n\n", summary.seq);
        Event {
            seq: summary.seq,
            source: summary.source.clone(),
            event_type: summary.event_type.clone(),
            text: Bytes::from(text),
        }
    }
}

/// The payload as JSON on one line. Valid JSON holds no raw line break inside a string,
/// so dropping every CR and LF removes only insignificant whitespace and keeps the rest
/// byte for byte.
fn one_line(payload: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(payload).ok()?;
    let _: &RawValue = serde_json::from_str(text).ok()?;
    let flat: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    RawValue::from_string(flat.trim().to_string()).ok()
}

/// Which events a client wants: by source and by type, exactly (as `GET /v1/events`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub source: Option<String>,
    pub event_type: Option<String>,
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        self.source.as_deref().is_none_or(|s| s == event.source)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| Some(t) == event.event_type.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Status;

    fn summary(seq: u64, event_type: Option<&str>) -> Summary {
        Summary {
            seq,
            id: format!("evt-{seq}"),
            source: "github".into(),
            event_type: event_type.map(str::to_string),
            status: Status::Queued,
            received_at_ms: 1_700_000_000_000,
            attempts: 0,
            size: 12,
            replay_of: None,
        }
    }

    #[test]
    fn an_event_is_one_frame_with_its_payload_on_one_line() {
        let e = Event::render(
            &summary(7, Some("push")),
            Some(b"{\n  \"a\": \"x y\",\r\n  \"b\": [1, 2]\n}\n"),
        );
        let text = std::str::from_utf8(&e.text).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "id: 7");
        assert_eq!(lines[1], "event: push");
        assert_eq!(&lines[3..], ["", ""]);
        let data: serde_json::Value =
            serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["seq"], 7);
        assert_eq!(data["type"], "push");
        assert_eq!(data["status"], "queued");
        assert_eq!(data["received_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(
            data["payload"],
            serde_json::json!({"a": "x y", "b": [1, 2]})
        );
        assert!(lines[2].contains(r#""payload":{  "a": "x y",  "b": [1, 2]}"#));
    }

    #[test]
    fn a_type_cannot_forge_fields_and_no_type_is_unknown() {
        let forged = Event::render(&summary(1, Some("x\ndata: evil\r")), Some(b"{}"));
        let text = std::str::from_utf8(&forged.text).unwrap();
        assert!(
            text.starts_with("id: 1\nevent: x data: evil \ndata: {"),
            "{text}"
        );
        let untyped = Event::render(&summary(2, None), Some(b"[]"));
        assert!(std::str::from_utf8(&untyped.text)
            .unwrap()
            .contains("\nevent: unknown\n"));
        let damaged = Event::render(&summary(3, Some("push")), None);
        assert!(std::str::from_utf8(&damaged.text)
            .unwrap()
            .contains(r#""payload":null"#));
        let not_json = Event::render(&summary(4, Some("push")), Some(b"{\"a\":"));
        assert!(std::str::from_utf8(&not_json.text)
            .unwrap()
            .contains(r#""payload":null"#));
    }

    #[test]
    fn filters_match_source_and_type_exactly() {
        let push = Event::render(&summary(1, Some("push")), Some(b"{}"));
        let all = Filter::default();
        let github_push = Filter {
            source: Some("github".into()),
            event_type: Some("push".into()),
        };
        let stripe = Filter {
            source: Some("stripe".into()),
            event_type: None,
        };
        let issues = Filter {
            source: None,
            event_type: Some("issues".into()),
        };
        assert!(all.matches(&push) && github_push.matches(&push));
        assert!(!stripe.matches(&push) && !issues.matches(&push));
    }
}
