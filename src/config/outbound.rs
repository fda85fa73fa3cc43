//! `[outbound]` and `[[subscriptions]]` (SPEC §9-10): where hookgate may send events,
//! how often it tries, and which endpoints get which events. Checked here without
//! reading secrets or files; the delivery worker builds its clients from these.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::{Dur, SecretRef, ServerConfig, SourceConfig};
use crate::deliver::pattern::Patterns;

/// The name of the gateway's own operational source (`hookgate.delivery.failed` …): no
/// source or subscription may take it.
pub const OWN_SOURCE: &str = "hookgate";

/// The most `retry` waits: every attempt is kept in the delivery's log with up to 4 KiB
/// of the answer, so the list bounds that log.
pub const MAX_RETRIES: usize = 100;

/// The range of `max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Networks a subscription may reach besides public addresses; an address alone is
    /// a network of one.
    #[serde(default, deserialize_with = "networks")]
    pub allow_private: Vec<IpNet>,
    /// Per attempt, from connecting to the end of the answer.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// The waits after the first attempt, the second, …
    #[serde(default = "default_retry")]
    pub retry: Vec<Dur>,
    /// Every attempt failing for this long disables the subscription.
    #[serde(default = "default_disable_after")]
    pub disable_after: Dur,
    /// Callback mode: how long a task may take to report back.
    #[serde(default = "default_callback_timeout")]
    pub callback_timeout: Dur,
    /// Where callbacks reach the ingest listener; see [`super::Config::callback_base_url`].
    pub callback_base_url: Option<String>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            allow_private: Vec::new(),
            timeout: default_timeout(),
            retry: default_retry(),
            disable_after: default_disable_after(),
            callback_timeout: default_callback_timeout(),
            callback_base_url: None,
        }
    }
}

impl OutboundConfig {
    pub fn timeout(&self) -> Duration {
        self.timeout.0
    }

    /// The retry waits, for [`crate::deliver::schedule::Schedule::new`].
    pub fn retry(&self) -> Vec<Duration> {
        self.retry.iter().map(|d| d.0).collect()
    }

    pub fn disable_after(&self) -> Duration {
        self.disable_after.0
    }

    pub fn callback_timeout(&self) -> Duration {
        self.callback_timeout.0
    }

    /// Whether `allow_private` lets a subscription reach `ip` (which the caller found to
    /// be private, loopback, link-local or a metadata address).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_private.iter().any(|net| net.contains(&ip))
    }
}

/// What a 2xx answer means for a delivery (SPEC §10), or `Pull`: nothing is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionMode {
    Notify,
    Finish,
    Callback,
    Pull,
}

impl SubscriptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionMode::Notify => "notify",
            SubscriptionMode::Finish => "finish",
            SubscriptionMode::Callback => "callback",
            SubscriptionMode::Pull => "pull",
        }
    }
}

impl fmt::Display for SubscriptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[subscriptions]]` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    /// Absent: a pull subscription.
    pub url: Option<String>,
    /// `SOURCE:TYPE` globs; see [`crate::deliver::pattern`].
    pub events: Vec<String>,
    #[serde(default = "yes")]
    pub active: bool,
    /// The Standard Webhooks signing secret (`whsec_…`).
    pub secret: Option<SecretRef>,
    /// As written; [`SubscriptionConfig::mode`] fills the default.
    pub mode: Option<SubscriptionMode>,
    #[serde(default)]
    pub ordered: bool,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// `COUNT/s|m|h`, as a source's.
    pub rate_limit: Option<String>,
    /// Sent with every attempt. Values may be credentials, so they are never printed.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A PEM file of roots trusted besides the system's, for this endpoint only.
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for SubscriptionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("active", &self.active)
            .field("secret", &self.secret)
            .field("mode", &self.mode)
            .field("ordered", &self.ordered)
            .field("max_in_flight", &self.max_in_flight)
            .field("rate_limit", &self.rate_limit)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("ca", &self.ca)
            .finish()
    }
}

impl SubscriptionConfig {
    /// The mode as written, else `notify` with a url and `pull` without.
    pub fn mode(&self) -> SubscriptionMode {
        match (self.mode, &self.url) {
            (Some(mode), _) => mode,
            (None, Some(_)) => SubscriptionMode::Notify,
            (None, None) => SubscriptionMode::Pull,
        }
    }

    /// Deliveries allowed in flight at once: one when `ordered`, else `max_in_flight`.
    pub fn in_flight(&self) -> usize {
        if self.ordered {
            1
        } else {
            self.max_in_flight
        }
    }

    /// The parsed `events` (always `Ok` once the config has been validated).
    pub fn patterns(&self) -> Result<Patterns, String> {
        Patterns::parse(&self.events)
    }

    /// The parsed `rate_limit`, if any (always `Ok` once the config has been validated).
    pub fn rate(&self) -> Result<Option<governor::Quota>, String> {
        self.rate_limit
            .as_deref()
            .map(crate::source::parse_rate)
            .transpose()
    }

    /// Checks one subscription alone; the error names the key.
    fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.name == OWN_SOURCE {
            return Err(format!(
                "name `{OWN_SOURCE}` is the gateway's own source of operational events"
            ));
        }
        Patterns::parse(&self.events).map_err(|e| format!("events: {e}"))?;
        match (self.mode(), &self.url) {
            (SubscriptionMode::Pull, Some(_)) => {
                return Err(
                    "mode `pull` sends nothing, so it takes no `url` (workers lease events through the admin API)"
                        .into(),
                )
            }
            (SubscriptionMode::Pull, None) => {
                for (key, set) in [
                    ("headers", !self.headers.is_empty()),
                    ("secret", self.secret.is_some()),
                    ("ca", self.ca.is_some()),
                    ("rate_limit", self.rate_limit.is_some()),
                ] {
                    if set {
                        return Err(format!(
                            "`{key}` is for subscriptions that send; this one has no `url` (pull)"
                        ));
                    }
                }
            }
            (mode, None) => {
                return Err(format!(
                    "mode `{mode}` needs a `url` (a subscription without one is a pull subscription)"
                ))
            }
            (_, Some(url)) => check_url(url).map_err(|e| format!("url: {e}"))?,
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(format!(
                "max_in_flight must be from 1 to {MAX_IN_FLIGHT}, not {}",
                self.max_in_flight
            ));
        }
        self.rate()?;
        check_headers(&self.headers).map_err(|e| format!("headers: {e}"))?;
        if self.ca.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err("ca must be the path of a PEM file".into());
        }
        Ok(())
    }
}

/// Checks `[outbound]` and every subscription against each other and the sources.
pub(super) fn validate(
    outbound: &OutboundConfig,
    subscriptions: &[SubscriptionConfig],
    sources: &[SourceConfig],
    server: &ServerConfig,
) -> anyhow::Result<()> {
    for (key, value) in [
        ("timeout", outbound.timeout),
        ("disable_after", outbound.disable_after),
        ("callback_timeout", outbound.callback_timeout),
    ] {
        if value.0.is_zero() {
            anyhow::bail!("outbound.{key} must be above 0");
        }
    }
    if outbound.retry.len() > MAX_RETRIES {
        anyhow::bail!(
            "outbound.retry lists {} waits; at most {MAX_RETRIES}",
            outbound.retry.len()
        );
    }
    if let Some(base) = &outbound.callback_base_url {
        check_url(base).map_err(|e| anyhow::anyhow!("outbound.callback_base_url: {e}"))?;
        if base.contains('?') {
            anyhow::bail!("outbound.callback_base_url: `{base}` must not have a query");
        }
    }
    let source_names: HashSet<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    let mut seen = HashSet::new();
    for (i, sub) in subscriptions.iter().enumerate() {
        let at = || format!("subscriptions[{i}] ({})", sub.name);
        sub.check().map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        if !seen.insert(sub.name.as_str()) {
            anyhow::bail!("subscriptions[{i}].name: `{}` is used twice", sub.name);
        }
        if source_names.contains(sub.name.as_str()) {
            anyhow::bail!(
                "subscriptions[{i}].name: `{}` is also a source's name; a subscription's derived events \
                 (`.finished`) carry its name as their source, so the two must differ",
                sub.name
            );
        }
        if sub.mode() == SubscriptionMode::Callback
            && outbound.callback_base_url.is_none()
            && server.listen.ip().is_unspecified()
        {
            anyhow::bail!(
                "{}: mode `callback` sends a callback URL, and server.listen {} is no address an endpoint can reach: \
                 set outbound.callback_base_url",
                at(),
                server.listen
            );
        }
    }
    Ok(())
}

/// The callback base when `callback_base_url` is absent: the ingest listener itself.
pub(super) fn default_callback_base(listen: SocketAddr, tls: bool) -> String {
    format!("{}://{listen}", if tls { "https" } else { "http" })
}

/// Names like sources' (letters, digits, `-`, `_`, `.`): they appear in URLs and as the
/// source of derived events.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "name `{name}` must be letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

/// An absolute `http://` or `https://` URL with a host. Credentials in the URL are
/// refused: the URL is shown by the API and the console, headers are not.
fn check_url(text: &str) -> Result<(), String> {
    let uri: Uri = text.parse().map_err(|_| format!("`{text}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return Err(format!("`{text}` must start with http:// or https://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if authority.as_str().contains('@') {
        // Do not echo it: the part before `@` is a password.
        return Err(
            "the URL carries credentials (user:password@); send them in `headers` instead".into(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    Ok(())
}

/// Valid names and values, none that hookgate sets itself, none twice. Values are never
/// echoed: they are often credentials.
fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (name, value) in headers {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let lower = parsed.as_str();
        if crate::deliver::reserved_header(lower) {
            return Err(format!("`{name}` is set by hookgate on every attempt"));
        }
        if !seen.insert(parsed.clone()) {
            return Err(format!("`{name}` is given twice (names ignore case)"));
        }
        HeaderValue::from_str(value).map_err(|_| {
            format!("the value of `{name}` is not a header value (printable ASCII, no line breaks)")
        })?;
    }
    Ok(())
}

/// `allow_private` entries: `10.0.0.0/8`, `fd00::/8`, or one address.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{text}` is neither an IP address nor a CIDR block such as 127.0.0.0/8"
                    ))
                })
        })
        .collect()
}

fn yes() -> bool {
    true
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(15))
}
fn default_retry() -> Vec<Dur> {
    [5, 300, 1800, 7200, 18_000, 36_000, 36_000]
        .into_iter()
        .map(|s| Dur(Duration::from_secs(s)))
        .collect()
}
fn default_disable_after() -> Dur {
    Dur(Duration::from_secs(5 * 86_400))
}
fn default_callback_timeout() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_max_in_flight() -> usize {
    16
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const SOURCE: &str = "[[sources]]\nname = \"github\"\nscheme = \"github\"\nsecrets = [\"s\"]\n";

    /// A config with the github source and one subscription with `body` as its keys.
    fn with_subscription(body: &str) -> anyhow::Result<Config> {
        Config::parse(&format!(
            "{SOURCE}[[subscriptions]]\nname = \"cmdb\"\n{body}"
        ))
    }

    fn refused(body: &str) -> String {
        format!("{:#}", with_subscription(body).unwrap_err())
    }

    #[test]
    fn defaults_when_nothing_is_written() {
        let config = Config::parse("").unwrap();
        let out = &config.outbound;
        assert!(out.allow_private.is_empty());
        assert_eq!(out.timeout(), Duration::from_secs(15));
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(
            out.retry(),
            [
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(1800),
                hours(2),
                hours(5),
                hours(10),
                hours(10)
            ]
        );
        assert_eq!(out.disable_after(), hours(120));
        assert_eq!(out.callback_timeout(), hours(1));
        assert_eq!(out.callback_base_url, None);
        assert_eq!(config.callback_base_url(), "http://127.0.0.1:8080");
        assert!(config.subscriptions.is_empty());
    }

    #[test]
    fn the_spec_example_parses() {
        let text = format!(
            r#"{SOURCE}
[outbound]
allow_private = ["127.0.0.0/8", "::1", "10.1.2.3/8"]
timeout = "10s"
retry = ["1s", "1m"]
disable_after = "2d"
callback_timeout = "30m"
callback_base_url = "https://hooks.example.com/"

[[subscriptions]]
name = "sync-cmdb"
url = "https://cmdb.example.com/hooks/objects"
events = ["github:push", "stripe:invoice.*", "*:*.deleted"]
active = true
secret = "env:CMDB_SUBSCRIPTION_SECRET"
mode = "notify"
ordered = false
max_in_flight = 16
rate_limit = "50/s"
headers = {{ "X-Team" = "ops", Authorization = "Bearer t0ps3cret" }}
ca = "certs/cmdb-ca.pem"
"#
        );
        let config = Config::parse(&text).unwrap();
        let out = &config.outbound;
        assert_eq!(
            out.allow_private,
            [
                "127.0.0.0/8".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        assert!(out.allows("127.0.0.9".parse().unwrap()));
        assert!(out.allows("10.200.0.1".parse().unwrap()));
        assert!(!out.allows("192.168.1.1".parse().unwrap()));
        assert_eq!(out.timeout(), Duration::from_secs(10));
        assert_eq!(
            out.retry(),
            [Duration::from_secs(1), Duration::from_secs(60)]
        );
        assert_eq!(out.disable_after(), Duration::from_secs(2 * 86_400));
        assert_eq!(out.callback_timeout(), Duration::from_secs(1800));
        assert_eq!(config.callback_base_url(), "https://hooks.example.com");

        let sub = &config.subscriptions[0];
        assert_eq!(sub.name, "sync-cmdb");
        assert_eq!(sub.mode(), SubscriptionMode::Notify);
        assert_eq!(sub.in_flight(), 16);
        assert!(sub.active);
        assert_eq!(
            sub.secret,
            Some(SecretRef::Env("CMDB_SUBSCRIPTION_SECRET".into()))
        );
        assert!(sub
            .patterns()
            .unwrap()
            .matches("stripe", Some("invoice.paid")));
        assert!(sub.rate().unwrap().is_some());
        assert_eq!(sub.headers["X-Team"], "ops");
        assert_eq!(sub.ca, Some(PathBuf::from("certs/cmdb-ca.pem")));
        // Header values may be credentials: Debug shows names only.
        let shown = format!("{config:?}");
        assert!(
            shown.contains("X-Team") && !shown.contains("t0ps3cret"),
            "{shown}"
        );
    }

    #[test]
    fn subscription_defaults() {
        let config =
            with_subscription("url = \"http://127.0.0.1:3000/\"\nevents = [\"*:*\"]\n").unwrap();
        let sub = &config.subscriptions[0];
        assert!(sub.active && !sub.ordered);
        assert_eq!(sub.mode(), SubscriptionMode::Notify);
        assert_eq!(sub.max_in_flight, 16);
        assert_eq!(sub.rate().unwrap(), None);
        assert!(sub.headers.is_empty() && sub.secret.is_none() && sub.ca.is_none());
    }

    #[test]
    fn no_url_means_pull() {
        let config = with_subscription("events = [\"github:*\"]\nordered = true\n").unwrap();
        let sub = &config.subscriptions[0];
        assert_eq!(sub.mode(), SubscriptionMode::Pull);
        assert_eq!(sub.in_flight(), 1);
        with_subscription("events = [\"github:*\"]\nmode = \"pull\"\n").unwrap();

        let err = refused("url = \"https://x.example\"\nevents = [\"*:*\"]\nmode = \"pull\"\n");
        assert!(
            err.starts_with("subscriptions[0] (cmdb): mode `pull`"),
            "{err}"
        );
        for mode in ["notify", "finish", "callback"] {
            let err = refused(&format!("events = [\"*:*\"]\nmode = \"{mode}\"\n"));
            assert!(
                err.contains(&format!("mode `{mode}` needs a `url`")),
                "{err}"
            );
        }
        for (key, value) in [
            ("headers", "{ X-A = \"b\" }"),
            ("secret", "\"env:X\""),
            ("ca", "\"ca.pem\""),
            ("rate_limit", "\"5/s\""),
        ] {
            let err = refused(&format!("events = [\"*:*\"]\n{key} = {value}\n"));
            assert!(
                err.contains(&format!("`{key}` is for subscriptions that send")),
                "{err}"
            );
        }
        let err = refused("events = [\"*:*\"]\nmode = \"later\"\n");
        assert!(err.contains("unknown variant `later`"), "{err}");
    }

    #[test]
    fn names_are_unique_and_apart_from_sources() {
        let sub = |name: &str| {
            format!("[[subscriptions]]\nname = \"{name}\"\nurl = \"https://a.example\"\nevents = [\"*:*\"]\n")
        };
        let err = Config::parse(&format!("{SOURCE}{}{}", sub("a"), sub("a"))).unwrap_err();
        assert_eq!(err.to_string(), "subscriptions[1].name: `a` is used twice");
        let err = Config::parse(&format!("{SOURCE}{}", sub("github"))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("subscriptions[0].name: `github` is also a source's name"),
            "{err}"
        );
        let err = Config::parse(&format!("{SOURCE}{}", sub("hookgate"))).unwrap_err();
        assert!(
            err.to_string()
                .contains("name `hookgate` is the gateway's own"),
            "{err}"
        );
        let err = Config::parse(&format!("{SOURCE}{}", sub("a b"))).unwrap_err();
        assert!(
            err.to_string().contains("name `a b` must be letters"),
            "{err}"
        );
        let err = Config::parse(&format!("{SOURCE}{}", sub(""))).unwrap_err();
        assert!(err.to_string().contains("name `` must be letters"), "{err}");
        Config::parse(&format!("{SOURCE}{}{}", sub("a"), sub("b.c_d-1"))).unwrap();
    }

    #[test]
    fn a_source_may_not_be_named_hookgate() {
        let err = Config::parse(
            "[[sources]]\nname = \"hookgate\"\nscheme = \"token\"\nsecrets = [\"s\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sources[0].name: `hookgate` is the gateway's own source of operational events"
        );
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        let events = "events = [\"*:*\"]\n";
        for url in [
            "http://127.0.0.1:3000/x?y=1",
            "https://h.example",
            "https://[::1]:8443/",
        ] {
            with_subscription(&format!("url = \"{url}\"\n{events}")).unwrap();
        }
        for (url, why) in [
            ("ftp://h.example/", "must start with http:// or https://"),
            ("/relative", "must start with http"),
            ("h.example", "must start with http"),
            ("not a url", "is not a URL"),
            ("", "is not a URL"),
        ] {
            let err = refused(&format!("url = \"{url}\"\n{events}"));
            assert!(
                err.contains(&format!("url: `{url}` ")) && err.contains(why),
                "{url}: {err}"
            );
        }
        let err = refused(&format!(
            "url = \"https://me:hunter2@h.example/\"\n{events}"
        ));
        assert!(
            err.contains("credentials") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn events_are_required_and_checked() {
        let url = "url = \"https://h.example\"\n";
        assert!(refused(url).contains("missing field `events`"));
        let err = refused(&format!("{url}events = []\n"));
        assert!(
            err.contains("subscriptions[0] (cmdb): events: the list of event patterns is empty"),
            "{err}"
        );
        let err = refused(&format!("{url}events = [\"github:push\", \"push\"]\n"));
        assert!(
            err.contains("events: event pattern `push` has no `:`"),
            "{err}"
        );
    }

    #[test]
    fn limits_are_checked() {
        let base = "url = \"https://h.example\"\nevents = [\"*:*\"]\n";
        for n in [0, 1025] {
            let err = refused(&format!("{base}max_in_flight = {n}\n"));
            assert!(
                err.contains(&format!("max_in_flight must be from 1 to 1024, not {n}")),
                "{err}"
            );
        }
        with_subscription(&format!("{base}max_in_flight = 1024\n")).unwrap();
        let err = refused(&format!("{base}rate_limit = \"fast\"\n"));
        assert!(err.contains("rate_limit `fast` is not COUNT/s"), "{err}");
        with_subscription(&format!("{base}rate_limit = \"60/m\"\n")).unwrap();
        let err = refused(&format!("{base}ca = \"\"\n"));
        assert!(err.contains("ca must be the path"), "{err}");
        let err = refused(&format!("{base}colour = \"blue\"\n"));
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn headers_are_valid_and_not_hookgates_own() {
        let base = "url = \"https://h.example\"\nevents = [\"*:*\"]\n";
        with_subscription(&format!(
            "{base}headers = {{ Authorization = \"Bearer x\", \"X-Team\" = \"ops\" }}\n"
        ))
        .unwrap();
        for name in [
            "webhook-signature",
            "Webhook-Id",
            "webhook-timestamp",
            "hookgate-seq",
            "Hookgate-Anything",
            "Content-Type",
            "Host",
            "user-agent",
            "Transfer-Encoding",
        ] {
            let err = refused(&format!("{base}headers = {{ \"{name}\" = \"v\" }}\n"));
            assert!(
                err.contains(&format!("headers: `{name}` is set by hookgate")),
                "{err}"
            );
        }
        let err = refused(&format!("{base}headers = {{ \"bad name\" = \"v\" }}\n"));
        assert!(
            err.contains("headers: `bad name` is not a header name"),
            "{err}"
        );
        let err = refused(&format!("{base}headers = {{ X-A = \"sec\\nret\" }}\n"));
        assert!(
            err.contains("the value of `X-A` is not a header value"),
            "{err}"
        );
        assert!(!err.contains("sec"), "{err}");
        let err = refused(&format!("{base}headers = {{ X-A = \"1\", x-a = \"2\" }}\n"));
        assert!(err.contains("is given twice"), "{err}");
    }

    #[test]
    fn outbound_values_are_checked() {
        let err = Config::parse("[outbound]\nallow_private = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("`10.0.0.0/33` is neither an IP address nor a CIDR block"),
            "{err}"
        );
        let err = Config::parse("[outbound]\nallow_private = [\"localhost\"]\n").unwrap_err();
        assert!(err.to_string().contains("key `allow_private`"), "{err}");
        let err = Config::parse("[outbound]\nretry = [\"5s\", \"5x\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("key `retry`") && err.to_string().contains("`5x`"),
            "{err}"
        );
        Config::parse("[outbound]\nretry = []\n").unwrap();
        let many = vec!["\"1s\""; MAX_RETRIES + 1].join(", ");
        let err = Config::parse(&format!("[outbound]\nretry = [{many}]\n")).unwrap_err();
        assert!(err.to_string().contains("at most 100"), "{err}");
        for key in ["timeout", "disable_after", "callback_timeout"] {
            let err = Config::parse(&format!("[outbound]\n{key} = \"0s\"\n")).unwrap_err();
            assert_eq!(err.to_string(), format!("outbound.{key} must be above 0"));
        }
        let err =
            Config::parse("[outbound]\ncallback_base_url = \"hooks.example.com\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with("outbound.callback_base_url:"),
            "{err}"
        );
        let err = Config::parse("[outbound]\ncallback_base_url = \"https://h.example/?a=1\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("must not have a query"), "{err}");
        let err = Config::parse("[outbound]\nsurprise = 1\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `surprise`"),
            "{err}"
        );
    }

    #[test]
    fn callbacks_need_a_reachable_base() {
        let sub = "[[subscriptions]]\nname = \"c\"\nurl = \"https://h.example\"\nevents = [\"*:*\"]\nmode = \"callback\"\n";
        let wildcard = "[server]\nlisten = \"0.0.0.0:8080\"\n";
        let err = Config::parse(&format!("{wildcard}{sub}")).unwrap_err();
        assert!(
            err.to_string().contains("set outbound.callback_base_url"),
            "{err}"
        );
        let config = Config::parse(&format!(
            "{wildcard}[outbound]\ncallback_base_url = \"https://hooks.example.com\"\n{sub}"
        ))
        .unwrap();
        assert_eq!(config.callback_base_url(), "https://hooks.example.com");
        assert_eq!(config.subscriptions[0].mode(), SubscriptionMode::Callback);
        let config = Config::parse(sub).unwrap();
        assert_eq!(config.callback_base_url(), "http://127.0.0.1:8080");
    }
}
