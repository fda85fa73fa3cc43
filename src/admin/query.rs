//! The query strings of `GET /v1/events` and `POST /v1/replay`, parsed into a journal
//! filter. Pure functions (no journal, no clock of their own), so that the fuzzer and
//! the unit tests call exactly what the handlers call.

use std::time::{Duration, SystemTime};

use crate::journal::{ListFilter, Status};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// The longest `wait` a listing may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// How many events one journal command of a bulk replay queues again (each embedded copy
/// rewrites its body, so ingest waits behind no more than this).
pub const REPLAY_CHUNK: usize = 256;

/// A listing asked for: what to look at, and how long to wait for a first match.
#[derive(Debug)]
pub struct ListQuery {
    pub filter: ListFilter,
    pub wait: Duration,
}

fn bad_status(value: &str) -> String {
    format!("status `{value}` is not one of queued, delivered, stale, failed")
}

/// `since` is an RFC 3339 time or a duration back from `now` (`90m`, `2h`, `7d`);
/// answers milliseconds since the epoch.
pub fn parse_since(value: &str, now: SystemTime) -> Result<u64, String> {
    if let Ok(t) =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
    {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        return Ok(ms.max(0) as u64);
    }
    match crate::config::units::parse_duration(value) {
        Ok(back) => Ok(crate::unix_ms(now).saturating_sub(back.as_millis() as u64)),
        Err(_) => Err(format!(
            "since `{value}` is neither an RFC 3339 time nor a duration such as 2h"
        )),
    }
}

/// `GET /v1/events?source=&id=&type=&status=&after=&before=&wait=&limit=`, looking at the
/// events up to `until` (the last durable seq); the error is the 400's message. `before`
/// (a seq or `latest`) pages back from the newest events, as a console's first page does.
pub fn parse_list(query: &str, until: u64) -> Result<ListQuery, String> {
    let mut filter = ListFilter {
        limit: DEFAULT_LIMIT,
        until: Some(until),
        ..ListFilter::default()
    };
    let mut wait = Duration::ZERO;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "source" => filter.source = Some(value.into_owned()),
            "id" => filter.id = Some(value.into_owned()),
            "type" => filter.event_type = Some(value.into_owned()),
            "status" => filter.status = Some(Status::parse(&value).ok_or(bad_status(&value))?),
            "after" if value == "latest" => filter.after = until,
            "after" => {
                filter.after = value
                    .parse()
                    .map_err(|_| format!("after `{value}` is not a sequence number or `latest`"))?
            }
            "before" if value == "latest" => filter.before = Some(until.saturating_add(1)),
            "before" => {
                filter.before = Some(value.parse().map_err(|_| {
                    format!("before `{value}` is not a sequence number or `latest`")
                })?)
            }
            "wait" => match crate::config::units::parse_duration(&value) {
                Ok(d) if d <= MAX_WAIT => wait = d,
                Ok(_) => return Err("wait may be at most 5m".into()),
                Err(e) => return Err(format!("wait: {e}")),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => filter.limit = n,
                _ => return Err(format!("limit must be a number from 1 to {MAX_LIMIT}")),
            },
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    if filter.before.is_some() && !wait.is_zero() {
        return Err("wait follows new events, so it cannot be used with before".into());
    }
    Ok(ListQuery { filter, wait })
}

/// `POST /v1/replay?source=&status=&since=`, over the events up to `until`; at least
/// one of the three must be named, so that no one replays everything by accident.
pub fn parse_replay(query: &str, until: u64, now: SystemTime) -> Result<ListFilter, String> {
    let mut filter = ListFilter {
        limit: REPLAY_CHUNK,
        until: Some(until),
        ..ListFilter::default()
    };
    let mut named = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "source" => filter.source = Some(value.into_owned()),
            "status" => filter.status = Some(Status::parse(&value).ok_or(bad_status(&value))?),
            "since" => filter.received_from_ms = parse_since(&value, now)?,
            other => return Err(format!("unknown parameter `{other}`")),
        }
        named = true;
    }
    if !named {
        return Err("name what to replay with at least one of source, status and since".into());
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_every_parameter() {
        let q = parse_list(
            "source=gh&id=d-1&type=push&status=failed&after=7&wait=2s&limit=5",
            9,
        )
        .unwrap();
        assert_eq!(q.filter.source.as_deref(), Some("gh"));
        assert_eq!(q.filter.id.as_deref(), Some("d-1"));
        assert_eq!(q.filter.event_type.as_deref(), Some("push"));
        assert_eq!(q.filter.status, Some(Status::Failed));
        assert_eq!(
            (q.filter.after, q.filter.until, q.filter.limit),
            (7, Some(9), 5)
        );
        assert_eq!(q.wait, Duration::from_secs(2));
        assert_eq!(parse_list("after=latest", 42).unwrap().filter.after, 42);
        assert_eq!(
            parse_list("before=latest", 42).unwrap().filter.before,
            Some(43)
        );
        assert_eq!(parse_list("before=7", 42).unwrap().filter.before, Some(7));
    }

    #[test]
    fn bad_listings_say_what_is_wrong() {
        for (query, message) in [
            ("limit=0", "limit must be a number from 1 to 1000"),
            ("wait=6m", "wait may be at most 5m"),
            ("after=x", "after `x` is not a sequence number or `latest`"),
            ("status=gone", "status `gone` is not one of"),
            ("colour=red", "unknown parameter `colour`"),
            (
                "before=x",
                "before `x` is not a sequence number or `latest`",
            ),
            ("before=latest&wait=1s", "wait follows new events"),
        ] {
            let e = parse_list(query, 0).unwrap_err();
            assert!(e.starts_with(message), "{query}: {e}");
        }
    }

    #[test]
    fn a_replay_must_name_something_and_since_counts_back_from_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(7200);
        assert!(parse_replay("", 5, now)
            .unwrap_err()
            .contains("at least one"));
        let f = parse_replay("since=1h", 5, now).unwrap();
        assert_eq!((f.received_from_ms, f.until), (3_600_000, Some(5)));
        let f = parse_replay("since=1970-01-01T00:00:01Z&status=stale", 5, now).unwrap();
        assert_eq!((f.received_from_ms, f.status), (1000, Some(Status::Stale)));
        assert!(parse_replay("since=soon", 5, now).is_err());
    }
}
