//! The log filter. `HOOKGATE_LOG` (or `RUST_LOG`, default `info`) is read as
//! `tracing`'s `EnvFilter` reads it, with two changes: the AMQP client's crates (lapin,
//! amq-protocol) log at `error` at most unless the filter names them. They print what
//! they handle: lapin logs a whole returned message (headers and payload) at `warn` when
//! no queue is bound to its routing key, again on every retry, and its frames at `trace`.
//! And the index's store (fjall, lsm-tree) logs at `warn` at most unless named: at `info`
//! it prints two lines per tree each time the index opens. Naming a crate
//! (`info,lapin=info`) lets its lines through again.

use tracing_subscriber::filter::LevelFilter;

/// Crates held to a level unless the filter names them (a prefix of their targets):
/// those whose lines hold message contents, and the index's store.
const CAPPED: [(&str, LevelFilter); 4] = [
    ("lapin", LevelFilter::ERROR),
    ("amq_protocol", LevelFilter::ERROR),
    ("fjall", LevelFilter::WARN),
    ("lsm_tree", LevelFilter::WARN),
];

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
    for (krate, cap) in CAPPED {
        if !directives.iter().any(|d| d.starts_with(krate)) {
            directives.push(format!("{krate}={}", level.min(cap)));
        }
    }
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_amqp_client_and_the_store_are_quiet_unless_named() {
        const REST: &str = "lapin=error,amq_protocol=error,fjall=warn,lsm_tree=warn";
        assert_eq!(log_filter(None), format!("info,{REST}"));
        assert_eq!(log_filter(Some("trace")), format!("trace,{REST}"));
        assert_eq!(
            log_filter(Some("off")),
            "off,lapin=off,amq_protocol=off,fjall=off,lsm_tree=off"
        );
        assert_eq!(
            log_filter(Some("error")),
            "error,lapin=error,amq_protocol=error,fjall=error,lsm_tree=error"
        );
        assert_eq!(
            log_filter(Some("info,lapin=info,fjall=debug")),
            "info,lapin=info,fjall=debug,amq_protocol=error,lsm_tree=warn"
        );
        // No bare level: EnvFilter's default, `error`, holds for the rest too.
        assert_eq!(
            log_filter(Some("hookgate::gateway=debug")),
            "hookgate::gateway=debug,lapin=error,amq_protocol=error,fjall=error,lsm_tree=error"
        );
    }
}
