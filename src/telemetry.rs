//! The log filter. `HOOKGATE_LOG` (or `RUST_LOG`, default `info`) sets hookgate's own
//! level; other crates log at `warn` at most, and lapin at `error`, unless the filter
//! names them. Dependencies print what they handle: lapin logs a whole returned message
//! (headers and payload) at `warn` when no queue is bound to its routing key, again on
//! every retry. Naming a crate (`info,lapin=info`) lets its lines through again.

use tracing_subscriber::filter::LevelFilter;

/// The crate whose lines hold message contents, and the level it is kept to.
const LAPIN: (&str, LevelFilter) = ("lapin", LevelFilter::ERROR);

/// The `EnvFilter` directives for a `HOOKGATE_LOG` value.
pub fn log_filter(given: Option<&str>) -> String {
    let given = given.unwrap_or("info");
    let mut level = None;
    let mut named = Vec::new();
    for directive in given.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.parse::<LevelFilter>() {
            Ok(bare) => level = Some(bare),
            Err(_) => named.push(directive),
        }
    }
    // EnvFilter's own default when no bare level is given.
    let level = level.unwrap_or(LevelFilter::ERROR);
    let names = |krate: &str| {
        named.iter().any(|d| {
            d.strip_prefix(krate)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '=', '[']))
        })
    };
    let mut directives = vec![level.min(LevelFilter::WARN).to_string()];
    if !names("hookgate") {
        directives.push(format!("hookgate={level}"));
    }
    if !names(LAPIN.0) {
        directives.push(format!("{}={}", LAPIN.0, level.min(LAPIN.1)));
    }
    directives.extend(named.iter().map(|d| d.to_string()));
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn dependencies_are_quieter_than_hookgate_unless_named() {
        assert_eq!(log_filter(None), "warn,hookgate=info,lapin=error");
        assert_eq!(log_filter(Some("debug")), "warn,hookgate=debug,lapin=error");
        assert_eq!(
            log_filter(Some("error")),
            "error,hookgate=error,lapin=error"
        );
        assert_eq!(
            log_filter(Some("info,lapin=info,h2=debug")),
            "warn,hookgate=info,lapin=info,h2=debug"
        );
        assert_eq!(
            log_filter(Some("hookgate::gateway=debug")),
            "error,lapin=error,hookgate::gateway=debug"
        );
        // A target that merely starts with the same letters is not lapin.
        assert_eq!(
            log_filter(Some("info,lapinou=debug")),
            "warn,hookgate=info,lapin=error,lapinou=debug"
        );
    }
}
