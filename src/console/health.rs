//! The Health page: readiness and the broker (`/readyz`), and from the metrics
//! (`/metrics`, what Prometheus scrapes) the backlog, free disk, ack latency p50/p99 and
//! requests per second.
//!
//! A rate needs two readings. The console keeps the last one (one for the whole
//! process, a few numbers) and shows the rate since then; when there is none, or it is
//! older than [`STALE`], it reads twice a second apart. Quantiles are estimated from the
//! histogram's buckets the way Prometheus' `histogram_quantile` does: linearly within
//! the bucket that holds the rank.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::api::{self, text};
use super::page::{html, Chrome};
use super::Ctx;
use crate::answer::Body;

/// Beyond this a kept reading is too old for a rate that means "now".
const STALE: Duration = Duration::from_secs(300);
/// The shortest time between two readings of a rate.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// One reading of the metrics the page computes from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub requests: f64,
    /// `hookgate_ack_seconds` buckets: upper bound and cumulative count.
    pub ack_buckets: Vec<(f64, f64)>,
    pub backlog: f64,
    pub backlog_bytes: f64,
    pub disk_free: Option<f64>,
    pub writable: Option<f64>,
}

/// Reads the Prometheus text: sums of `hookgate_requests_total`, the ack histogram's
/// buckets, and the journal gauges.
pub fn parse(metrics: &str) -> Reading {
    let mut reading = Reading::default();
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        match name {
            "hookgate_requests_total" => reading.requests += value,
            "hookgate_ack_seconds_bucket" => {
                let bound = labels
                    .split(',')
                    .find_map(|l| l.trim().strip_prefix("le="))
                    .map(|b| b.trim_matches('"'));
                let bound = match bound {
                    Some("+Inf") => f64::INFINITY,
                    Some(b) => match b.parse() {
                        Ok(b) => b,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                reading.ack_buckets.push((bound, value));
            }
            "hookgate_journal_backlog" => reading.backlog = value,
            "hookgate_journal_backlog_bytes" => reading.backlog_bytes = value,
            "hookgate_journal_disk_free_bytes" => reading.disk_free = Some(value),
            "hookgate_journal_writable" => reading.writable = Some(value),
            _ => {}
        }
    }
    reading
        .ack_buckets
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    reading
}

/// The `q` quantile (0..1) of cumulative buckets, in the buckets' unit; `None` without
/// observations. A rank in the `+Inf` bucket answers the highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut below = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(below.0);
            }
            let (lower, lower_count) = below;
            let inside = count - lower_count;
            if inside <= 0.0 {
                return Some(bound);
            }
            return Some(lower + (bound - lower) * (rank - lower_count) / inside);
        }
        below = (bound, count);
    }
    Some(below.0)
}

/// Each bucket's count in `now` less its count in `then`: the window's histogram.
pub fn difference(now: &[(f64, f64)], then: &[(f64, f64)]) -> Vec<(f64, f64)> {
    now.iter()
        .map(|&(bound, count)| {
            let before = then
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, (count - before).max(0.0))
        })
        .collect()
}

/// The last reading, and when it was taken.
#[derive(Default)]
pub struct Samples {
    last: Mutex<Option<(Instant, Reading)>>,
}

async fn read(ctx: &Ctx<'_>) -> Reading {
    let response = ctx
        .admin
        .route(&http::Method::GET, "/metrics", "", &[])
        .await;
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    parse(&String::from_utf8_lossy(&bytes))
}

#[derive(Template)]
#[template(path = "health.html")]
struct HealthPage {
    chrome: Chrome,
    ready: bool,
    reason: String,
    broker: String,
    writable: String,
    backlog: String,
    backlog_bytes: String,
    disk_free: String,
    p50: String,
    p99: String,
    latency_window: String,
    rate: String,
    window: String,
}

/// A byte count as people read it: `1.5 GiB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn millis(seconds: Option<f64>) -> String {
    match seconds {
        None => "—".into(),
        Some(s) if s < 0.01 => format!("{:.2} ms", s * 1000.0),
        Some(s) => format!("{:.0} ms", s * 1000.0),
    }
}

/// `GET /health`.
pub async fn page(ctx: &Ctx<'_>) -> Response<Body> {
    let ready = api::get(ctx.admin, "/readyz").await;
    let kept = ctx
        .admin
        .console
        .samples
        .last
        .lock()
        .expect("samples lock")
        .clone();
    let (then_at, then) = match kept {
        Some((at, reading)) if at.elapsed() >= MIN_WINDOW && at.elapsed() <= STALE => (at, reading),
        _ => {
            let first = read(ctx).await;
            let at = Instant::now();
            tokio::time::sleep(MIN_WINDOW).await;
            (at, first)
        }
    };
    let now = read(ctx).await;
    let window = then_at.elapsed();
    *ctx.admin.console.samples.last.lock().expect("samples lock") =
        Some((Instant::now(), now.clone()));
    let rate = (now.requests - then.requests).max(0.0) / window.as_secs_f64();
    // The window's latencies when it saw requests; else all since the start.
    let recent = difference(&now.ack_buckets, &then.ack_buckets);
    let (latencies, latency_window) = match recent.last() {
        Some((_, count)) if *count > 0.0 => (recent, format!("last {} s", window.as_secs())),
        _ => (now.ack_buckets.clone(), "since the start".to_string()),
    };
    let broker = match text(&ready.body, "broker").as_str() {
        "none" => "not configured (embedded mode: workers use the pull API)".to_string(),
        "unreachable" => "unreachable: events wait in the journal".to_string(),
        node => format!("connected to {node}"),
    };
    let page = HealthPage {
        chrome: ctx.chrome("Health", "health"),
        ready: ready.ok(),
        reason: if ready.ok() {
            String::new()
        } else {
            ready.message()
        },
        broker,
        writable: match now.writable {
            Some(w) if w >= 1.0 => "yes".into(),
            Some(_) => "no: new events get 503".into(),
            None => "—".into(),
        },
        backlog: format!("{:.0}", now.backlog),
        backlog_bytes: bytes(now.backlog_bytes),
        disk_free: now.disk_free.map_or("—".into(), bytes),
        p50: millis(quantile(0.5, &latencies)),
        p99: millis(quantile(0.99, &latencies)),
        latency_window,
        rate: format!("{rate:.1}"),
        window: format!("{:.0}", window.as_secs_f64()),
    };
    html(StatusCode::OK, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP hookgate_requests Requests
# TYPE hookgate_requests counter
hookgate_requests_total{source="github",code="200"} 90
hookgate_requests_total{source="github",code="401"} 10
hookgate_ack_seconds_bucket{le="0.001"} 50
hookgate_ack_seconds_bucket{le="0.002"} 90
hookgate_ack_seconds_bucket{le="0.004"} 100
hookgate_ack_seconds_bucket{le="+Inf"} 100
hookgate_ack_seconds_sum 0.1
hookgate_ack_seconds_count 100
hookgate_journal_backlog 7
hookgate_journal_backlog_bytes 2048
hookgate_journal_disk_free_bytes 1073741824
hookgate_journal_writable 1
# EOF
"#;

    #[test]
    fn the_metrics_text_gives_the_numbers_the_page_shows() {
        let r = parse(METRICS);
        assert_eq!(r.requests, 100.0);
        assert_eq!(r.ack_buckets.len(), 4);
        assert_eq!((r.backlog, r.backlog_bytes), (7.0, 2048.0));
        assert_eq!(r.disk_free, Some(1073741824.0));
        assert_eq!(bytes(2048.0), "2.0 KiB");
        assert_eq!(bytes(1073741824.0), "1.0 GiB");
        assert_eq!(bytes(12.0), "12 bytes");
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let r = parse(METRICS);
        assert_eq!(quantile(0.5, &r.ack_buckets), Some(0.001));
        let p99 = quantile(0.99, &r.ack_buckets).unwrap();
        assert!((p99 - 0.0038).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(
            quantile(0.99, &[(1.0, 1.0), (f64::INFINITY, 5.0)]),
            Some(1.0)
        );
        let window = difference(&[(1.0, 10.0), (2.0, 30.0)], &[(1.0, 10.0), (2.0, 20.0)]);
        assert_eq!(window, vec![(1.0, 0.0), (2.0, 10.0)]);
    }
}
