//! A configured source at run time: its scheme with settings, resolved secrets, limits
//! and where its events' id, type and timestamps are found.

use std::time::Duration;

use http::{HeaderName, Method};

use crate::config::{Secret, SecretRef, ServerConfig, SourceConfig};
use crate::headers::HeaderPolicy;
use crate::locator::Locator;
use crate::verify::mac::Algorithm;
use crate::verify::{Encoding, Generic, Github, Scheme, Template, Token, Twilio, SCHEME_NAMES};

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub scheme: Scheme,
    pub secret_refs: Vec<SecretRef>,
    pub secrets: Vec<Secret>,
    pub tolerance: Duration,
    pub methods: Vec<Method>,
    pub max_body: u64,
    pub id: Locator,
    pub event_type: Locator,
    /// An unsigned event time, for schemes that sign none (ordering only).
    pub timestamp: Option<Locator>,
    pub order: Option<OrderRule>,
    pub routing_key: String,
    pub insecure: bool,
    /// Requests allowed per period, with the whole count as the burst.
    pub limiter: Option<governor::DefaultDirectRateLimiter>,
    pub allowed_client_names: Vec<String>,
    /// Whether any locator looks into the payload (else JSON is only validated).
    pub reads_payload: bool,
    /// Which request headers are kept with its events.
    pub headers: HeaderPolicy,
    /// Whether its signature leaves the id uncovered, so that events are also deduplicated
    /// on what is signed (see [`crate::verify::replay`]).
    pub dedup_signed: bool,
    /// Its series of the request and event counters, found once.
    pub counters: crate::metrics::SourceCounters,
}

#[derive(Debug)]
pub struct OrderRule {
    pub key: Locator,
    /// `None`: the event's signed (or unsigned) timestamp.
    pub timestamp: Option<Locator>,
}

impl Source {
    /// Validates a source's config without reading its secrets.
    pub fn check(cfg: &SourceConfig, server: &ServerConfig) -> Result<(), String> {
        Source::plan(cfg, server).map(drop)
    }

    /// Builds a source and resolves its secrets; an error names the secret's reference.
    pub fn build(cfg: &SourceConfig, server: &ServerConfig) -> Result<Source, String> {
        let mut source = Source::plan(cfg, server)?;
        for (i, reference) in cfg.secrets.iter().enumerate() {
            let secret = reference
                .resolve()
                .map_err(|e| format!("secrets[{i}]: {e}"))?;
            source
                .scheme
                .check_secret(&secret)
                .map_err(|e| format!("secrets[{i}] ({reference}) {e}"))?;
            source.secrets.push(secret);
        }
        Ok(source)
    }

    fn plan(cfg: &SourceConfig, server: &ServerConfig) -> Result<Source, String> {
        if cfg.name.is_empty()
            || !cfg
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "name `{}` must be letters, digits, `-`, `_` or `.` (it becomes the URL /hooks/NAME)",
                cfg.name
            ));
        }
        let scheme = scheme(cfg)?;
        match (&scheme, cfg.insecure) {
            (Scheme::None, false) => {
                return Err("scheme `none` verifies nothing; it needs `insecure = true`".into())
            }
            (Scheme::None, true) => {}
            (_, true) => return Err("`insecure = true` is only for scheme `none`".into()),
            (_, false) if cfg.secrets.is_empty() => {
                return Err(format!(
                    "scheme `{}` needs at least one entry in `secrets`",
                    cfg.scheme
                ))
            }
            _ => {}
        }
        let defaults = scheme.defaults();
        if defaults.signs_timestamp && cfg.scheme != "hmac" && cfg.timestamp.is_some() {
            return Err(format!(
                "scheme `{}` signs its own timestamp; `timestamp` cannot be set",
                cfg.scheme
            ));
        }
        let methods = match &cfg.methods {
            None => vec![Method::POST],
            Some(list) if list.is_empty() => return Err("`methods` must not be empty".into()),
            Some(list) => list
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("methods: `{m}` is not an HTTP method"))
                })
                .collect::<Result<_, _>>()?,
        };
        let max_body = match cfg.max_body {
            Some(size) if size.0 == 0 => return Err("`max_body` must be at least 1 byte".into()),
            Some(size) if size.0 > server.max_body.0 => {
                return Err(format!(
                    "`max_body` ({} bytes) may only lower server.max_body ({} bytes)",
                    size.0, server.max_body.0
                ))
            }
            Some(size) => size.0,
            None => server.max_body.0,
        };
        let routing_key = cfg
            .routing_key
            .clone()
            .unwrap_or_else(|| "{source}.{type}".into());
        check_routing_key(&routing_key)?;
        let limiter = match &cfg.rate_limit {
            Some(rate) => Some(governor::RateLimiter::direct(parse_rate(rate)?)),
            None => None,
        };
        let allowed_client_names: Vec<String> = cfg
            .allowed_client_names
            .iter()
            .flatten()
            .map(|name| name.to_ascii_lowercase())
            .collect();
        if !allowed_client_names.is_empty()
            && server.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            return Err("`allowed_client_names` needs [server.tls] with a `client_ca`".into());
        }
        let order = match (&cfg.order_key, &cfg.order_timestamp) {
            (Some(key), timestamp) => Some(OrderRule {
                key: key.clone(),
                timestamp: timestamp.clone(),
            }),
            (None, Some(_)) => return Err("`order_timestamp` needs `order_key`".into()),
            (None, None) => None,
        };
        let headers = HeaderPolicy::new(
            &scheme,
            cfg.drop_headers.as_deref(),
            cfg.keep_headers.as_deref(),
        )?;
        let id = cfg.id.clone().unwrap_or(defaults.id);
        let dedup_signed = !crate::verify::replay::covers_id(&scheme, &id);
        let event_type = cfg.event_type.clone().unwrap_or(defaults.event_type);
        let timestamp = if defaults.signs_timestamp {
            None
        } else {
            cfg.timestamp.clone()
        };
        let order_locators = order
            .iter()
            .flat_map(|o| std::iter::once(&o.key).chain(o.timestamp.as_ref()));
        let reads_payload = [&id, &event_type]
            .into_iter()
            .chain(timestamp.as_ref())
            .chain(order_locators)
            .any(Locator::reads_payload);
        Ok(Source {
            name: cfg.name.clone(),
            id,
            event_type,
            timestamp,
            reads_payload,
            scheme,
            secret_refs: cfg.secrets.clone(),
            secrets: Vec::new(),
            tolerance: cfg.tolerance.map(|d| d.0).unwrap_or(DEFAULT_TOLERANCE),
            methods,
            max_body,
            order,
            routing_key,
            insecure: cfg.insecure,
            limiter,
            allowed_client_names,
            headers,
            dedup_signed,
            counters: Default::default(),
        })
    }

    /// The path providers post to.
    pub fn path(&self) -> String {
        format!("/hooks/{}", self.name)
    }
}

fn scheme(cfg: &SourceConfig) -> Result<Scheme, String> {
    let only_for = |key: &str, set: bool, scheme: &str| {
        if set && cfg.scheme != scheme {
            Err(format!("`{key}` is only for scheme `{scheme}`"))
        } else {
            Ok(())
        }
    };
    only_for("allow_sha1", cfg.allow_sha1.is_some(), "github")?;
    only_for("token_header", cfg.token_header.is_some(), "token")?;
    for (key, set) in [
        ("signature_header", cfg.signature_header.is_some()),
        ("algorithm", cfg.algorithm.is_some()),
        ("encoding", cfg.encoding.is_some()),
        ("prefix", cfg.prefix.is_some()),
        ("signed", cfg.signed.is_some()),
    ] {
        only_for(key, set, "hmac")?;
    }
    Ok(match cfg.scheme.as_str() {
        "github" => Scheme::Github(Github {
            allow_sha1: cfg.allow_sha1.unwrap_or(false),
        }),
        "stripe" => Scheme::Stripe,
        "standard-webhooks" => Scheme::StandardWebhooks,
        "shopify" => Scheme::Shopify,
        "paddle" => Scheme::Paddle,
        "pagerduty" => Scheme::PagerDuty,
        "linear" => Scheme::Linear,
        "slack" => Scheme::Slack,
        "gitlab" => Scheme::Gitlab,
        "twitch" => Scheme::Twitch,
        "zoom" => Scheme::Zoom,
        "twilio" => Scheme::Twilio(Twilio {
            public_url: cfg.public_url.clone().ok_or(
                "scheme `twilio` needs `public_url`: the URL exactly as set in Twilio's console",
            )?,
        }),
        "token" => Scheme::Token(Token {
            header: header_name(
                "token_header",
                cfg.token_header.as_deref().unwrap_or("authorization"),
            )?,
        }),
        "none" => Scheme::None,
        "hmac" => {
            let header = cfg
                .signature_header
                .as_deref()
                .ok_or("scheme `hmac` needs `signature_header`")?;
            let generic = Generic {
                header: header_name("signature_header", header)?,
                algorithm: Algorithm::parse(cfg.algorithm.as_deref().unwrap_or("sha256"))?,
                encoding: Encoding::parse(cfg.encoding.as_deref().unwrap_or("hex"))?,
                prefix: cfg.prefix.clone().unwrap_or_default(),
                signed: Template::parse(cfg.signed.as_deref().unwrap_or("{body}"))
                    .map_err(|e| format!("signed: {e}"))?,
                timestamp: cfg.timestamp.clone().filter(|l| *l != Locator::None),
                id: cfg.id.clone().unwrap_or(Locator::None),
                event_type: cfg.event_type.clone().unwrap_or(Locator::None),
                url: cfg.public_url.clone().unwrap_or_default(),
            };
            generic.validate()?;
            Scheme::Hmac(generic)
        }
        other => {
            return Err(format!(
                "scheme `{other}` is not known (known: {})",
                SCHEME_NAMES.join(", ")
            ))
        }
    })
}

fn header_name(key: &str, text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("`{key}`: `{text}` is not a header name"))
}

fn check_routing_key(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("routing_key `{template}` has an unclosed `{{`"))?;
        let name = &rest[open + 1..open + close];
        if !matches!(name, "source" | "type") {
            return Err(format!(
                "routing_key `{template}`: `{{{name}}}` is not one of {{source}} {{type}}"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

/// Parses `500/s`, `60/m` or `1000/h` into a quota whose burst is the whole count.
pub fn parse_rate(text: &str) -> Result<governor::Quota, String> {
    let bad =
        || format!("rate_limit `{text}` is not COUNT/s, COUNT/m or COUNT/h with COUNT above 0");
    let (count, per) = text.split_once('/').ok_or_else(bad)?;
    let count: std::num::NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
    match per.trim() {
        "s" => Ok(governor::Quota::per_second(count)),
        "m" => Ok(governor::Quota::per_minute(count)),
        "h" => Ok(governor::Quota::per_hour(count)),
        _ => Err(bad()),
    }
}

/// Fills a routing-key template.
pub fn routing_key(template: &str, source: &str, event_type: Option<&str>) -> String {
    template
        .replace("{source}", source)
        .replace("{type}", event_type.unwrap_or("unknown"))
}

/// The length of [`routing_key`]'s answer, found without building it (every request
/// checks it). A source's name holds no braces, so neither replacement can make a new
/// placeholder, and counting them in the template is the same as replacing.
pub fn routing_key_len(template: &str, source: &str, event_type: Option<&str>) -> usize {
    let kind = event_type.unwrap_or("unknown");
    let mut len = template.len();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        rest = &rest[open..];
        if let Some(after) = rest.strip_prefix("{source}") {
            len = len - "{source}".len() + source.len();
            rest = after;
        } else if let Some(after) = rest.strip_prefix("{type}") {
            len = len - "{type}".len() + kind.len();
            rest = after;
        } else {
            rest = &rest[1..];
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_key_length_is_the_filled_templates() {
        let templates = [
            "{source}.{type}",
            "events",
            "{type}",
            "{{type}}.{source}{source}",
            "a{sou{type}rce}b{",
            "{source}-{type}-{type}",
            "",
        ];
        for template in templates {
            for kind in [
                None,
                Some(""),
                Some("push"),
                Some("{source}"),
                Some("ü.{type}"),
            ] {
                assert_eq!(
                    routing_key_len(template, "git-hub_1.x", kind),
                    routing_key(template, "git-hub_1.x", kind).len(),
                    "{template} with {kind:?}"
                );
            }
        }
    }
}
