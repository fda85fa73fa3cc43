//! `hookgate check-config`: everything `serve` reads before it listens, read the same
//! way (every secret reference, the broker URL, the admin token, TLS files, subscription
//! secrets and CAs), reported line by line, then one verdict. Each problem is printed
//! once, where it is; nothing secret is printed, only references.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, SecretRef, TlsConfig};
use crate::source::Source;

/// What the report has found so far.
#[derive(Default)]
struct Report {
    errors: usize,
    warnings: usize,
}

impl Report {
    fn error(&mut self, line: String) {
        self.errors += 1;
        println!("{line}");
    }

    fn warning(&mut self, line: String) {
        self.warnings += 1;
        println!("{line}");
    }

    /// One reference, resolved as `serve` would: a line saying it resolves, or the error.
    fn reference(&mut self, indent: &str, key: &str, reference: &SecretRef) -> bool {
        match reference.resolve() {
            Ok(_) => {
                println!("{indent}{key} {reference}: resolves");
                true
            }
            Err(e) => {
                self.error(format!("{indent}{key} {reference}: error: {e}"));
                false
            }
        }
    }

    fn tls(&mut self, table: &str, tls: &Option<TlsConfig>) {
        if let Some(settings) = tls {
            match crate::listen::tls::Tls::load(settings) {
                Ok(_) => println!("  [{table}] {}: readable", settings.cert.display()),
                Err(e) => self.error(format!("  [{table}] error: {e}")),
            }
        }
    }
}

/// What a listener binds and where a client reaches it: a wildcard address binds every
/// interface, so clients on this machine use loopback and others this host's name.
pub fn listener(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let local = super::reachable(addr);
    if addr.ip().is_unspecified() {
        format!(
            "binds {addr} (every interface); clients here use {scheme}://{local}, others {scheme}://<this host>:{}",
            addr.port()
        )
    } else {
        format!("binds {addr}; clients use {scheme}://{addr}")
    }
}

/// Validates a config and reports each part; Ok(false) when anything is wrong.
pub fn check_config(path: &Path) -> anyhow::Result<bool> {
    let config = Config::load(path)?;
    let mut report = Report::default();
    let base = super::base_url(&config);
    println!("config {}", path.display());
    println!(
        "  ingest   {}",
        listener(config.server.listen, config.server.tls.is_some())
    );
    report.tls("server.tls", &config.server.tls);
    // serve refuses a TOKIO_WORKER_THREADS it cannot use where `server.threads` is absent.
    if let Err(e) = config.server.request_threads() {
        report.error(format!("  error: {e}"));
    }
    println!(
        "  admin    {}",
        listener(config.admin.listen, config.admin.tls.is_some())
    );
    report.tls("admin.tls", &config.admin.tls);
    match &config.admin.token {
        Some(token) => {
            report.reference("  ", "admin.token", token);
        }
        None => println!("  admin.token: none (/v1/ is open to this machine)"),
    }
    println!("  journal  {}", config.journal.path.display());
    match &config.broker {
        Some(broker) => {
            println!("  mode     broker (RabbitMQ), exchange {}", broker.exchange);
            // Each node by its `host:port` (never the URL, which holds a password).
            for (i, reference) in broker.url.refs().iter().enumerate() {
                let key = broker.url.key(i);
                match reference
                    .resolve()
                    .and_then(|url| crate::forward::Node::parse(&url))
                {
                    Ok(node) => println!("  {key} {reference}: resolves, node {}", node.name()),
                    Err(e) => report.error(format!("  {key} {reference}: error: {e}")),
                }
            }
        }
        None => println!("  mode     embedded (no broker; pull API)"),
    }
    if config.sources.is_empty() {
        report.warning(
            "warning: no [[sources]]: every request will get 404 unknown_source".to_string(),
        );
    }
    for cfg in &config.sources {
        println!(
            "source {}: POST {base}/hooks/{} scheme={}",
            cfg.name, cfg.name, cfg.scheme
        );
        let mut resolved = true;
        for (i, reference) in cfg.secrets.iter().enumerate() {
            resolved &= report.reference("  ", &format!("secrets[{i}]"), reference);
        }
        // Its own problems only: one of an unreadable secret was printed above.
        if !resolved {
            continue;
        }
        match Source::build(cfg, &config.server) {
            Ok(source) if source.insecure && source.allowed_client_names.is_empty() => report
                .warning(
                    "  warning: scheme none verifies nothing; anyone can post events here"
                        .to_string(),
                ),
            Ok(source) if source.insecure => println!(
                "  mTLS only: clients whose certificate names {}",
                source.allowed_client_names.join(", ")
            ),
            Ok(_) => {}
            Err(e) => report.error(format!("  error: {e}")),
        }
    }
    subscriptions(&config, &mut report);
    let warnings = match report.warnings {
        0 => String::new(),
        1 => ", 1 warning".to_string(),
        n => format!(", {n} warnings"),
    };
    match report.errors {
        0 => println!("config {} is valid{warnings}", path.display()),
        1 => println!("config {} is not valid: 1 error{warnings}", path.display()),
        n => println!(
            "config {} is not valid: {n} errors{warnings}",
            path.display()
        ),
    }
    Ok(report.errors == 0)
}

/// Each configured subscription, and whether its secret and CA file can be read.
fn subscriptions(config: &Config, report: &mut Report) {
    for sub in &config.subscriptions {
        let target = match &sub.url {
            Some(url) => format!("POST {url}"),
            None => "pull (GET /v1/subscriptions/{id}/pull)".to_string(),
        };
        println!(
            "subscription {}: {target} mode={} events={}{}",
            sub.name,
            sub.mode(),
            sub.events.join(","),
            if sub.active { "" } else { " (inactive)" }
        );
        match (&sub.secret, crate::deliver::managed::signing_secret(sub)) {
            (Some(reference), Ok(Some(_))) => println!("  secret {reference}: resolves"),
            (_, Err(e)) => report.error(format!("  error: {e:#}")),
            (_, Ok(_)) => {}
        }
        if let Some(ca) = &sub.ca {
            // As `serve` reads it: the whole file, as PEM text.
            match crate::deliver::managed::read_ca(ca) {
                Ok(_) => println!("  ca {}: reads", ca.display()),
                Err(e) => report.error(format!("  ca {}: error: {e}", ca.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_say_what_is_bound_and_what_clients_use() {
        assert_eq!(
            listener("0.0.0.0:8080".parse().unwrap(), false),
            "binds 0.0.0.0:8080 (every interface); clients here use http://127.0.0.1:8080, others http://<this host>:8080"
        );
        assert_eq!(
            listener("127.0.0.1:9090".parse().unwrap(), true),
            "binds 127.0.0.1:9090; clients use https://127.0.0.1:9090"
        );
    }
}
