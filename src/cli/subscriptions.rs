//! `hookgate subscriptions list | show | create | delete | test`: SPEC §9's admin API
//! from a terminal, the way `hookgate events` is. Tables for people, `--json` for
//! scripts; the admin address and token come from the config file or `--admin`/`--token`.

use std::path::PathBuf;

use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::events::Target;
use super::table::{cell, clean, joined, table, CELL_WIDTH};

/// What stays as it is in a path segment; everything else is percent-encoded, so an id
/// can never reach another path.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An id as one path segment.
pub(crate) fn segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// Where the admin API is, shared by `subscriptions` and `deliveries`.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The config that names the admin address and token.
    #[arg(
        short,
        long,
        env = "HOOKGATE_CONFIG",
        default_value = "hookgate.toml",
        global = true
    )]
    pub config: PathBuf,
    /// The admin API's base URL (default: from the config's admin.listen).
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// The admin token (default: the config's admin.token).
    #[arg(
        long,
        env = "HOOKGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// For [admin.tls]: the CA to trust and the client certificate to present.
    #[command(flatten)]
    pub tls: super::client::TlsArgs,
}

impl AdminArgs {
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(
            Target::resolve(&self.config, self.admin.as_deref(), self.token.as_deref())?
                .with_tls(self.tls.clone()),
        )
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum SubscriptionsAction {
    /// List subscriptions, from the config and from the API.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one subscription with its delivery counts.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Create a subscription; its signing secret is printed once.
    Create(CreateArgs),
    /// Delete a subscription made through the API; its pending deliveries are dropped.
    Delete { id: String },
    /// Send a `hookgate.test` event to a subscription now and print the attempt; exit 1
    /// unless the endpoint answered 2xx.
    Test {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Letters, digits, `-`, `_` and `.`; not a source's name.
    #[arg(long)]
    pub name: String,
    /// The endpoint to POST events to; without it, a pull subscription.
    #[arg(long)]
    pub url: Option<String>,
    /// A SOURCE:TYPE pattern such as github:push or stripe:invoice.*; repeat for more.
    #[arg(long = "events", required = true, value_name = "PATTERN")]
    pub events: Vec<String>,
    /// Default: notify with --url, pull without.
    #[arg(long, value_parser = ["notify", "finish", "callback", "pull"])]
    pub mode: Option<String>,
    /// One delivery in flight at a time, in journal order.
    #[arg(long)]
    pub ordered: bool,
    /// Create it switched off.
    #[arg(long)]
    pub inactive: bool,
    /// Deliveries in flight at once (1 to 1024).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_in_flight: Option<u32>,
    /// COUNT/s, COUNT/m or COUNT/h.
    #[arg(long)]
    pub rate_limit: Option<String>,
    /// A header sent with every attempt, NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Print the whole answer (with the secret) as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or("a header is NAME=VALUE, e.g. X-Team=ops")?;
    let name = name.trim();
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    Ok((name.to_string(), value.to_string()))
}

impl CreateArgs {
    /// The body of `POST /v1/subscriptions`: only what was given, so the server's
    /// defaults apply to the rest.
    pub fn body(&self) -> Result<Value, String> {
        let mut body = Map::new();
        body.insert("name".into(), json!(self.name));
        if let Some(url) = &self.url {
            body.insert("url".into(), json!(url));
        }
        body.insert("events".into(), json!(self.events));
        if self.inactive {
            body.insert("active".into(), json!(false));
        }
        if let Some(mode) = &self.mode {
            body.insert("mode".into(), json!(mode));
        }
        if self.ordered {
            body.insert("ordered".into(), json!(true));
        }
        if let Some(n) = self.max_in_flight {
            body.insert("max_in_flight".into(), json!(n));
        }
        if let Some(rate) = &self.rate_limit {
            body.insert("rate_limit".into(), json!(rate));
        }
        if !self.headers.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let mut headers = Map::new();
            for (name, value) in &self.headers {
                if !seen.insert(name.to_ascii_lowercase()) {
                    return Err(format!("--header {name} is given twice"));
                }
                headers.insert(name.clone(), json!(value));
            }
            body.insert("headers".into(), Value::Object(headers));
        }
        Ok(Value::Object(body))
    }
}

/// Runs one `subscriptions` action; `Ok(false)` for a test whose attempt failed.
pub async fn run(action: SubscriptionsAction, admin: &AdminArgs) -> anyhow::Result<bool> {
    let target = admin.target()?;
    match action {
        SubscriptionsAction::List { json } => {
            let page = target
                .call_with(Method::GET, "/v1/subscriptions", None)
                .await?;
            let list = items(&page, "subscriptions");
            if json {
                for sub in list {
                    println!("{sub}");
                }
            } else if list.is_empty() {
                eprintln!("no subscriptions");
            } else {
                print!("{}", list_table(list));
            }
        }
        SubscriptionsAction::Show { id, json } => {
            let path = format!("/v1/subscriptions/{}", segment(&id));
            let sub = target.call_with(Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sub)?);
            } else {
                print!("{}", details(&sub));
            }
        }
        SubscriptionsAction::Create(args) => {
            let body = args.body().map_err(anyhow::Error::msg)?;
            let created = target
                .call_with(Method::POST, "/v1/subscriptions", Some(&body))
                .await?;
            if args.json {
                println!("{created}");
                eprintln!("{SECRET_NOTE}");
            } else {
                print!("{}", created_text(&created));
            }
        }
        SubscriptionsAction::Delete { id } => {
            let path = format!("/v1/subscriptions/{}", segment(&id));
            target.call_with(Method::DELETE, &path, None).await?;
            println!("deleted subscription {id}");
        }
        SubscriptionsAction::Test { id, json } => {
            let path = format!("/v1/subscriptions/{}/test", segment(&id));
            let answer = target.call_with(Method::POST, &path, None).await?;
            let attempt = the_attempt(&answer);
            if json {
                println!("{answer}");
            } else {
                println!("{}", attempt_text(attempt));
            }
            return Ok(succeeded(attempt));
        }
    }
    Ok(true)
}

/// The array under `key`, or nothing.
pub(crate) fn items<'a>(page: &'a Value, key: &str) -> &'a [Value] {
    page[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

const SECRET_NOTE: &str = "the secret is shown only now: give it to the endpoint, which checks \
                           webhook-signature with it";

fn list_table(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                cell(&s["id"]),
                cell(&s["name"]),
                cell(&s["mode"]),
                cell(&s["active"]),
                cell(&s["managed"]),
                if s["url"].is_null() {
                    "(pull)".to_string()
                } else {
                    cell(&s["url"])
                },
                joined(&s["events"]),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "MODE", "ACTIVE", "MANAGED", "URL", "EVENTS"],
        &rows,
    )
}

/// One subscription, a field a line, with its counts.
fn details(sub: &Value) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |label: &str, value: String| rows.push(vec![format!("{label}:"), value]);
    for key in ["id", "name", "url", "mode", "active"] {
        row(key, cell(&sub[key]));
    }
    if !sub["disabled_reason"].is_null() {
        row("disabled", cell(&sub["disabled_reason"]));
    }
    row("events", joined(&sub["events"]));
    for key in ["ordered", "max_in_flight", "rate_limit"] {
        row(key, cell(&sub[key]));
    }
    // Names only: the API never sends header values, and they may be credentials.
    let headers = match &sub["headers"] {
        Value::Object(map) => map.keys().cloned().collect::<Vec<_>>().join(", "),
        other => joined(other),
    };
    row(
        "headers",
        if headers.is_empty() {
            "-".into()
        } else {
            headers
        },
    );
    for key in [
        "managed",
        "created_at",
        "pending",
        "delivered",
        "failed",
        "last_success_at",
        "last_failure_at",
    ] {
        row(key, cell(&sub[key]));
    }
    let text = table(&["", ""], &rows);
    // The table's first line is its (empty) header.
    text.split_once('\n')
        .map_or(text.clone(), |(_, rest)| rest.to_string())
}

fn created_text(created: &Value) -> String {
    let mut out = format!(
        "created subscription {} ({})\n",
        cell(&created["id"]),
        cell(&created["name"])
    );
    match created["secret"].as_str() {
        Some(secret) => {
            out.push_str(&format!("secret: {secret}\n{SECRET_NOTE}\n"));
        }
        None => out.push_str("the answer holds no secret\n"),
    }
    out
}

/// The attempt in a test's answer: under `attempt`, or the last of `attempts`, or the
/// answer itself.
fn the_attempt(answer: &Value) -> &Value {
    if answer["attempt"].is_object() {
        return &answer["attempt"];
    }
    match answer["attempts"].as_array().and_then(|a| a.last()) {
        Some(last) => last,
        None => answer,
    }
}

fn succeeded(attempt: &Value) -> bool {
    attempt["status_code"]
        .as_u64()
        .is_some_and(|code| (200..300).contains(&code))
}

/// `200 in 35 ms: {"ok":true}` or `error in 1000 ms: connection refused`.
pub(crate) fn attempt_text(attempt: &Value) -> String {
    let outcome = match (attempt["status_code"].as_u64(), &attempt["error"]) {
        (Some(code), _) => code.to_string(),
        (None, Value::Null) => "no answer".to_string(),
        (None, _) => "error".to_string(),
    };
    let took = match attempt["duration_ms"].as_u64() {
        Some(ms) => format!(" in {ms} ms"),
        None => String::new(),
    };
    let detail = match (&attempt["error"], &attempt["response_body"]) {
        (Value::String(e), _) => clean(e, CELL_WIDTH * 4),
        (_, Value::String(body)) if !body.is_empty() => clean(body, CELL_WIDTH * 4),
        _ => String::new(),
    };
    if detail.is_empty() {
        format!("{outcome}{took}")
    } else {
        format!("{outcome}{took}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        action: SubscriptionsAction,
        #[command(flatten)]
        admin: AdminArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("subscriptions").chain(args.iter().copied()))
    }

    fn create(args: &[&str]) -> CreateArgs {
        match parse(&[&["create"], args].concat()).unwrap().action {
            SubscriptionsAction::Create(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_sends_only_what_was_given() {
        let args = create(&[
            "--name",
            "n",
            "--url",
            "https://h.example/x",
            "--events",
            "github:push",
        ]);
        assert_eq!(
            args.body().unwrap(),
            json!({"name": "n", "url": "https://h.example/x", "events": ["github:push"]})
        );
        let args = create(&[
            "--name",
            "n",
            "--url",
            "https://h.example/x",
            "--events",
            "github:push",
            "--events",
            "stripe:invoice.*",
            "--mode",
            "finish",
            "--ordered",
            "--inactive",
            "--header",
            "X-Team=ops",
            "--header",
            "Authorization=Bearer a=b",
            "--max-in-flight",
            "4",
            "--rate-limit",
            "5/s",
        ]);
        assert_eq!(
            args.body().unwrap(),
            json!({
                "name": "n", "url": "https://h.example/x",
                "events": ["github:push", "stripe:invoice.*"], "active": false,
                "mode": "finish", "ordered": true, "max_in_flight": 4, "rate_limit": "5/s",
                "headers": {"X-Team": "ops", "Authorization": "Bearer a=b"}
            })
        );
        // No url: a pull subscription, left to the server's default mode.
        let args = create(&["--name", "p", "--events", "*:*"]);
        assert_eq!(
            args.body().unwrap(),
            json!({"name": "p", "events": ["*:*"]})
        );
        let args = create(&[
            "--name", "n", "--events", "*:*", "--header", "X-A=1", "--header", "x-a=2",
        ]);
        assert!(args.body().unwrap_err().contains("given twice"));
    }

    #[test]
    fn bad_create_arguments_are_refused_before_any_call() {
        for args in [
            &["create", "--name", "n"][..],
            &["create", "--events", "*:*"],
            &[
                "create", "--name", "n", "--events", "*:*", "--mode", "later",
            ],
            &[
                "create",
                "--name",
                "n",
                "--events",
                "*:*",
                "--header",
                "no-equals",
            ],
            &[
                "create",
                "--name",
                "n",
                "--events",
                "*:*",
                "--header",
                "bad name=v",
            ],
            &[
                "create",
                "--name",
                "n",
                "--events",
                "*:*",
                "--max-in-flight",
                "0",
            ],
            &[
                "create",
                "--name",
                "n",
                "--events",
                "*:*",
                "--max-in-flight",
                "1025",
            ],
            &["show"],
            &["delete"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn the_other_actions_and_admin_flags() {
        let cli = parse(&[
            "show",
            "sub_1",
            "--json",
            "--admin",
            "http://127.0.0.1:1",
            "--token",
            "t",
        ])
        .unwrap();
        assert!(
            matches!(cli.action, SubscriptionsAction::Show { ref id, json: true } if id == "sub_1")
        );
        assert_eq!(cli.admin.admin.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(cli.admin.token.as_deref(), Some("t"));
        assert!(matches!(
            parse(&["list"]).unwrap().action,
            SubscriptionsAction::List { json: false }
        ));
        assert!(matches!(
            parse(&["delete", "x"]).unwrap().action,
            SubscriptionsAction::Delete { .. }
        ));
        assert!(matches!(
            parse(&["test", "x"]).unwrap().action,
            SubscriptionsAction::Test { json: false, .. }
        ));
    }

    #[test]
    fn ids_cannot_leave_their_path_segment() {
        assert_eq!(segment("sub_01H.x-y~z"), "sub_01H.x-y~z");
        assert_eq!(
            segment("../../v1/events?x=1"),
            "..%2F..%2Fv1%2Fevents%3Fx%3D1"
        );
        assert_eq!(segment("a b"), "a%20b");
    }

    #[test]
    fn the_list_is_a_table() {
        let page = json!({"subscriptions": [
            {"id": "s1", "name": "cmdb", "url": "https://cmdb.example/h", "events": ["github:push", "*:*.deleted"],
             "active": true, "mode": "notify", "managed": "config"},
            {"id": "s22", "name": "workers", "url": null, "events": ["*:*"], "active": false,
             "mode": "pull", "managed": "api"}
        ]});
        assert_eq!(
            list_table(items(&page, "subscriptions")),
            "ID   NAME     MODE    ACTIVE  MANAGED  URL                     EVENTS\n\
             s1   cmdb     notify  yes     config   https://cmdb.example/h  github:push, *:*.deleted\n\
             s22  workers  pull    no      api      (pull)                  *:*\n"
        );
    }

    #[test]
    fn show_gives_a_field_a_line() {
        let sub = json!({"id": "s1", "name": "cmdb", "url": "https://cmdb.example/h",
            "events": ["github:push"], "active": false, "mode": "finish", "ordered": false,
            "max_in_flight": 16, "rate_limit": null, "headers": ["X-Team"], "managed": "api",
            "created_at": "2026-01-02T03:04:05Z", "pending": 2, "delivered": 10, "failed": 1,
            "last_success_at": "2026-01-02T04:00:00Z", "last_failure_at": null,
            "disabled_reason": "410 Gone"});
        let text = details(&sub);
        assert!(
            text.starts_with("id:               s1\nname:             cmdb\n"),
            "{text}"
        );
        assert!(text.contains("\ndisabled:         410 Gone\n"), "{text}");
        assert!(text.contains("\nheaders:          X-Team\n"), "{text}");
        assert!(text.contains("\nrate_limit:       -\n"), "{text}");
        assert!(text.contains("\nlast_failure_at:  -\n"), "{text}");
        assert!(text.ends_with("last_failure_at:  -\n"), "{text}");
        // Header values never show, even if a server sent them.
        let text = details(&json!({"headers": {"Authorization": "Bearer hunter2"}}));
        assert!(
            text.contains("headers:          Authorization\n") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn create_prints_the_secret_once_with_a_warning() {
        let text = created_text(&json!({"id": "s1", "name": "cmdb", "secret": "whsec_abc"}));
        assert_eq!(
            text,
            format!("created subscription s1 (cmdb)\nsecret: whsec_abc\n{SECRET_NOTE}\n")
        );
        assert!(SECRET_NOTE.contains("shown only now"));
        assert!(created_text(&json!({"id": "s1", "name": "p"})).contains("no secret"));
    }

    #[test]
    fn a_test_attempt_in_one_line() {
        let ok = json!({"attempt": {"status_code": 204, "duration_ms": 35, "response_body": ""}});
        assert_eq!(attempt_text(the_attempt(&ok)), "204 in 35 ms");
        assert!(succeeded(the_attempt(&ok)));
        let bad =
            json!({"status_code": 500, "duration_ms": 12, "response_body": "oops\n\u{1b}[2J"});
        assert_eq!(attempt_text(the_attempt(&bad)), "500 in 12 ms: oops  [2J");
        assert!(!succeeded(the_attempt(&bad)));
        let down = json!({"attempts": [{"status_code": 500}, {"error": "connection refused", "duration_ms": 1}]});
        assert_eq!(
            attempt_text(the_attempt(&down)),
            "error in 1 ms: connection refused"
        );
        assert!(!succeeded(the_attempt(&down)));
        assert_eq!(attempt_text(&json!({})), "no answer");
    }

    /// An admin API stand-in on loopback: answers each connection with the next reply
    /// and hands back every request it read, raw.
    async fn admin_on_loopback(
        replies: Vec<&'static str>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in replies {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                    assert!(n > 0, "the client hung up mid-request");
                }
                seen.push(String::from_utf8(request).unwrap());
                stream.write_all(reply.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            }
            seen
        });
        (url, task)
    }

    fn admin_args(url: &str) -> AdminArgs {
        AdminArgs {
            config: PathBuf::from("/nonexistent/hookgate.toml"),
            admin: Some(url.to_string()),
            token: Some("tok".to_string()),
            tls: Default::default(),
        }
    }

    #[tokio::test]
    async fn create_and_delete_over_a_real_socket() {
        let created = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 47\r\nconnection: close\r\n\r\n{\"id\":\"s1\",\"name\":\"cmdb\",\"secret\":\"whsec_abc=\"}";
        let deleted = "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
        let (url, server) = admin_on_loopback(vec![created, deleted]).await;
        let admin = admin_args(&url);
        let args = create(&[
            "--name",
            "cmdb",
            "--url",
            "https://h.example/x",
            "--events",
            "*:*",
        ]);
        assert!(run(SubscriptionsAction::Create(args), &admin)
            .await
            .unwrap());
        let delete = SubscriptionsAction::Delete { id: "s/1".into() };
        assert!(run(delete, &admin).await.unwrap());

        let seen = server.await.unwrap();
        let (head, body) = seen[0].split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("POST /v1/subscriptions HTTP/1.1\r\n"),
            "{head}"
        );
        let head = head.to_ascii_lowercase();
        assert!(head.contains("\r\nauthorization: bearer tok\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap(),
            json!({"name": "cmdb", "url": "https://h.example/x", "events": ["*:*"]})
        );
        assert!(
            seen[1].starts_with("DELETE /v1/subscriptions/s%2F1 HTTP/1.1\r\n"),
            "{}",
            seen[1]
        );
    }

    #[tokio::test]
    async fn the_apis_refusal_is_the_error() {
        let refusal = "HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/json\r\ncontent-length: 83\r\nconnection: close\r\n\r\n{\"error\":\"target_not_allowed\",\"message\":\"127.0.0.1 is outside allow_private......\"}";
        let (url, server) = admin_on_loopback(vec![refusal]).await;
        let args = create(&[
            "--name",
            "n",
            "--url",
            "http://127.0.0.1:1/",
            "--events",
            "*:*",
        ]);
        let err = run(SubscriptionsAction::Create(args), &admin_args(&url))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "422 target_not_allowed: 127.0.0.1 is outside allow_private......"
        );
        server.await.unwrap();
    }
}
