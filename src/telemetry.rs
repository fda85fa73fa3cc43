//! The log filter. `HOOKGATE_LOG` (or `RUST_LOG`, default `info`) is read as
//! `tracing`'s `EnvFilter` reads it, with one change: the AMQP client's crates (lapin,
//! amq-protocol) log at `error` at most unless the filter names them. They print what
//! they handle: lapin logs a whole returned message (headers and payload) at `warn` when
//! no queue is bound to its routing key, again on every retry, and its frames at `trace`.
//! Naming a crate (`info,lapin=info`) lets its lines through again.

use tracing_subscriber::filter::LevelFilter;

/// Crates whose lines hold message contents (a prefix of their targets).
const QUIET: [&str; 2] = ["lapin", "amq_protocol"];

/// The `EnvFilter` directives for a `HOOKGATE_LOG` value.
pub fn log_filter(given: Option<&str>) -> String {
    let given = given.unwrap_or("info");
    let mut level = None;
    let mut directives = Vec::new();
    for directive in given.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if let Ok(bare) = directive.parse::<LevelFilter>() {
            level = Some(bare);
        }
        directives.push(directive.to_string());
    }
    // EnvFilter's own default when no bare level is given.
    let level = level.unwrap_or(LevelFilter::ERROR);
    for krate in QUIET {
        if !directives.iter().any(|d| d.starts_with(krate)) {
            directives.push(format!("{krate}={}", level.min(LevelFilter::ERROR)));
        }
    }
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_amqp_client_is_quiet_unless_named() {
        assert_eq!(log_filter(None), "info,lapin=error,amq_protocol=error");
        assert_eq!(
            log_filter(Some("trace")),
            "trace,lapin=error,amq_protocol=error"
        );
        assert_eq!(log_filter(Some("off")), "off,lapin=off,amq_protocol=off");
        assert_eq!(
            log_filter(Some("info,lapin=info")),
            "info,lapin=info,amq_protocol=error"
        );
        assert_eq!(
            log_filter(Some("hookgate::gateway=debug")),
            "hookgate::gateway=debug,lapin=error,amq_protocol=error"
        );
    }
}
