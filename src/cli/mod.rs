//! The subcommands other than `serve`: `check-config`, `init`, `send`, `events`,
//! `subscriptions`, `deliveries`, `health` and `gen-certs`.

pub mod certs;
mod check;
pub mod client;
pub mod deliveries;
pub mod events;
pub mod forward;
pub mod sse;
pub mod subscriptions;
mod table;

pub use check::check_config;

use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::Config;
use crate::gateway::unix_seconds;
use crate::locator::Locator;
use crate::source::Source;
use crate::verify::{Outgoing, Scheme};

/// The starter config `init` writes; the same file the README runs.
pub const STARTER: &str = include_str!("../../examples/hookgate.toml");

/// Writes the starter config, refusing to overwrite unless `force`.
pub fn init(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", out.display());
    }
    std::fs::write(out, starter_with_token())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote {}; check it with: hookgate check-config -c {}",
        out.display(),
        out.display()
    );
    Ok(())
}

/// The line of [`STARTER`] that `init` replaces with a token.
const TOKEN_LINE: &str =
    "# token = \"env:HOOKGATE_ADMIN_TOKEN\"   # `hookgate init` writes a random token here";

/// The starter config with a new random admin token, so that a page in the operator's
/// browser cannot use the admin API even from the same machine. `hookgate events` reads
/// it from the file.
fn starter_with_token() -> String {
    let token = format!(
        "hga_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    STARTER.replace(
        TOKEN_LINE,
        &format!("token = \"{token}\"   # random, written by `hookgate init`; `hookgate events` reads it from here"),
    )
}

/// Asks the admin listener of the gateway that `path` configures for `/healthz` (or
/// `/readyz` when `ready`); answers whether it said yes. Made for health checks in images
/// that have no HTTP client of their own. Under `[admin.tls]` it speaks https, trusting
/// `tls`'s CA (and presenting its client certificate).
pub async fn health(path: &Path, ready: bool, tls: &client::TlsArgs) -> anyhow::Result<bool> {
    let config = Config::load(path)?;
    let scheme = if config.admin.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let which = if ready { "readyz" } else { "healthz" };
    let url = format!("{scheme}://{}/{which}", reachable(config.admin.listen));
    let asked = client::request_with(
        http::Method::GET,
        &url,
        http::HeaderMap::new(),
        bytes::Bytes::new(),
        tls,
    );
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), asked)
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within 5 s"))?
        .with_context(|| format!("cannot reach {url}"))?;
    let said = String::from_utf8_lossy(&reply.body);
    println!("{url}: {} {}", reply.status.as_u16(), said.trim());
    Ok(reply.status.is_success())
}

/// The address a client on this machine reaches a listener at: a wildcard address
/// (`0.0.0.0`, `::`) becomes the loopback address of its family.
pub fn reachable(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into())
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into())
        }
        _ => {}
    }
    addr
}

/// Where a client on this machine reaches the ingest listener.
fn base_url(config: &Config) -> String {
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", reachable(config.server.listen))
}

pub struct SendArgs<'a> {
    pub config: &'a Path,
    pub source: &'a str,
    pub body: Option<&'a Path>,
    pub content_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub id: Option<&'a str>,
    pub url: Option<&'a str>,
    /// Pad a generated body to about this many bytes (for load tests).
    pub pad_to: Option<usize>,
    /// For an https:// URL: the CA to trust and the client certificate to present.
    pub tls: client::TlsArgs,
}

/// Builds a request for a source exactly as its provider would sign it.
pub fn build_request(
    source: &Source,
    args: &SendArgs,
    now: SystemTime,
) -> anyhow::Result<Outgoing> {
    let id = args
        .id
        .map(str::to_string)
        .unwrap_or_else(|| format!("hg_{}", uuid::Uuid::new_v4().simple()));
    let event_type = args.event_type.unwrap_or("hookgate.test");
    for (flag, value) in [("--id", id.as_str()), ("--event-type", event_type)] {
        if ::http::HeaderValue::from_str(value).is_err() {
            bail!("{flag} must be printable text without control characters");
        }
    }
    let mut out = Outgoing::default();
    let (body, content_type) = match args.body {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let content_type = match args.content_type {
                Some(given) => given.to_string(),
                None => guess_content_type(path)?,
            };
            (bytes, content_type)
        }
        None => {
            let (body, generated) =
                generated_body(source, &id, event_type, now, args.pad_to.unwrap_or(0));
            (
                body,
                args.content_type.map(str::to_string).unwrap_or(generated),
            )
        }
    };
    out.body = body;
    out.set("content-type", &content_type);
    out.set(
        "user-agent",
        concat!("hookgate-send/", env!("CARGO_PKG_VERSION")),
    );
    for (locator, value) in [(&source.id, id.as_str()), (&source.event_type, event_type)] {
        if let Locator::Header(name) = locator.primary() {
            out.set(name.as_str(), value);
        }
    }
    if let Some(secret) = source.secrets.first() {
        if secret.expose().starts_with(b"whpk_") {
            bail!(
                "the first secret of `{}` is a public key (whpk_); send cannot sign with it",
                source.name
            );
        }
        source.scheme.sign(secret, &mut out, unix_seconds(now));
    } else if !matches!(source.scheme, Scheme::None) {
        bail!("source `{}` has no secret to sign with", source.name);
    }
    Ok(out)
}

/// A small event with the id and type where the source looks for them: a form when a
/// locator reads a form field (Twilio), else JSON.
fn generated_body(
    source: &Source,
    id: &str,
    event_type: &str,
    now: SystemTime,
    pad_to: usize,
) -> (Vec<u8>, String) {
    let placed = [(&source.id, id), (&source.event_type, event_type)];
    let mut form_fields: Vec<(&str, &str)> = placed
        .iter()
        .filter_map(|(locator, value)| match locator.primary() {
            Locator::Form(field) => Some((field.as_str(), *value)),
            _ => None,
        })
        .collect();
    // A provider's bodies differ from event to event; where the id travels in a header,
    // it goes in the body too, so that two test events are never the same signed bytes
    // (which hookgate takes for a re-post of one: see the README's replay defence).
    let id_in_body = matches!(source.id.primary(), Locator::Json(_) | Locator::Form(_));
    if !id_in_body && !form_fields.is_empty() {
        form_fields.push(("HookgateDelivery", id));
    }
    if !form_fields.is_empty() {
        let form = |padding: &str| {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(&form_fields);
            form.append_pair("Message", "a test event from hookgate send");
            if !padding.is_empty() {
                form.append_pair("padding", padding);
            }
            form.finish()
        };
        let plain = form("");
        let short = pad_to.saturating_sub(plain.len() + "&padding=".len());
        let form = if short > 0 {
            form(&"x".repeat(short))
        } else {
            plain
        };
        return (
            form.into_bytes(),
            "application/x-www-form-urlencoded".into(),
        );
    }
    let mut doc =
        json!({"message": "a test event from hookgate send", "created": unix_seconds(now)});
    if !id_in_body {
        set_pointer(&mut doc, "/delivery", json!(id));
    }
    for (locator, value) in placed {
        if let Locator::Json(pointer) = locator.primary() {
            set_pointer(&mut doc, pointer, json!(value));
        }
    }
    if matches!(source.scheme, Scheme::Linear) {
        // Linear's timestamp travels in the signed body, in milliseconds.
        set_pointer(&mut doc, "/webhookTimestamp", json!(crate::unix_ms(now)));
    }
    let mut body = serde_json::to_vec(&doc).expect("plain JSON");
    let short = pad_to.saturating_sub(body.len() + r#","padding":""#.len());
    if short > 0 {
        set_pointer(&mut doc, "/padding", json!("x".repeat(short)));
        body = serde_json::to_vec(&doc).expect("plain JSON");
    }
    (body, "application/json".into())
}

/// The content type of a body file from its extension; any other extension is refused
/// rather than guessed, since a wrong guess is answered 400 or 415 for no visible reason.
fn guess_content_type(path: &Path) -> anyhow::Result<String> {
    let extension = path.extension().and_then(|e| e.to_str());
    Ok(match extension.map(str::to_ascii_lowercase).as_deref() {
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("form") => "application/x-www-form-urlencoded",
        _ => bail!(
            "cannot tell the content type of {} from its extension (.json, .xml and .form are known); pass --content-type, e.g. --content-type application/json",
            path.display()
        ),
    }
    .to_string())
}

/// Sets `value` at a JSON pointer, creating objects along the way.
fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    let mut at = doc;
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, token) in tokens.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        let map = at.as_object_mut().expect("made an object above");
        if i + 1 == tokens.len() {
            map.insert(token.clone(), value);
            return;
        }
        at = map.entry(token.clone()).or_insert_with(|| json!({}));
    }
}

/// `hookgate send`: signs and posts one event, prints the answer; Ok(true) on 2xx.
pub async fn send(args: SendArgs<'_>) -> anyhow::Result<bool> {
    let config = Config::load(args.config)?;
    let cfg = config
        .sources
        .iter()
        .find(|s| s.name == args.source)
        .with_context(|| {
            format!(
                "no source named `{}` in {}",
                args.source,
                args.config.display()
            )
        })?;
    let source = Source::build(cfg, &config.server)
        .map_err(|e| anyhow::anyhow!("source `{}`: {e}", cfg.name))?;
    let url = match args.url {
        Some(url) => url.to_string(),
        None => format!("{}{}", base_url(&config), source.path()),
    };
    let out = build_request(&source, &args, SystemTime::now())?;
    let url = match &out.query {
        Some(query) => format!("{url}{}{query}", if url.contains('?') { '&' } else { '?' }),
        None => url,
    };
    let reply = client::request_with(
        ::http::Method::POST,
        &url,
        out.headers,
        Bytes::from(out.body),
        &args.tls,
    )
    .await?;
    println!("POST {url} -> {}", reply.status);
    println!("{}", String::from_utf8_lossy(&reply.body));
    Ok(reply.status.is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_are_created() {
        let mut doc = json!({"a": 1});
        set_pointer(&mut doc, "/data/object/id", json!("x"));
        set_pointer(&mut doc, "/type", json!("t"));
        assert_eq!(
            doc,
            json!({"a": 1, "data": {"object": {"id": "x"}}, "type": "t"})
        );
    }

    #[test]
    fn the_starter_config_is_valid() {
        Config::parse(STARTER).unwrap();
    }

    #[test]
    fn the_starter_configs_commented_subscription_is_valid() {
        let at = STARTER
            .find("# [outbound]")
            .expect("a commented [outbound]");
        let uncommented: String = STARTER[at..]
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .unwrap_or(line.trim_start_matches('#'))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = Config::parse(&format!("{}{uncommented}", &STARTER[..at])).unwrap();
        assert_eq!(config.subscriptions.len(), 1);
        assert_eq!(config.outbound.allow_private.len(), 1);
    }

    #[test]
    fn init_writes_a_new_random_token() {
        let (one, two) = (starter_with_token(), starter_with_token());
        assert_ne!(one, two);
        let config = Config::parse(&one).unwrap();
        let token = config.admin.token.expect("a token").resolve().unwrap();
        assert!(token.expose().starts_with(b"hga_") && token.expose().len() == 68);
    }
}
