//! Every scheme end to end against the real binary: `hookgate send` signs as the provider
//! would and the running gateway accepts it; and each handshake, sent to the running
//! binary, is answered only when its signature holds, with nothing journaled.

mod common;

use std::time::SystemTime;

use bytes::Bytes;
use common::*;
use hookgate::config::Secret;
use hookgate::gateway::unix_seconds;
use hookgate::verify::{Outgoing, Scheme};
use http::StatusCode;
use serde_json::json;

const SW_KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One source per scheme, with dev secrets.
fn every_scheme() -> String {
    let simple = [
        ("github", "github", "gh-secret"),
        ("stripe", "stripe", "whsec_stripe_secret"),
        ("sw", "standard-webhooks", SW_KEY),
        ("shopify", "shopify", "shopify-secret"),
        ("slack", "slack", "slack-signing-secret"),
        ("gitlab", "gitlab", "gitlab-token"),
        ("gitlab-signed", "gitlab", SW_KEY),
        ("paddle", "paddle", "pdl_ntf_secret"),
        ("pagerduty", "pagerduty", "pd-secret"),
        ("linear", "linear", "lin-secret"),
        ("twitch", "twitch", "twitch-secret"),
        ("zoom", "zoom", "zoom-secret"),
        ("token", "token", "tok-secret"),
    ];
    let mut text = String::new();
    for (name, scheme, secret) in simple {
        text.push_str(&format!(
            "[[sources]]\nname = \"{name}\"\nscheme = \"{scheme}\"\nsecrets = [\"{secret}\"]\n\n"
        ));
    }
    text.push_str(
        r#"[[sources]]
name = "twilio"
scheme = "twilio"
secrets = ["twilio-auth-token"]
public_url = "https://hooks.example.test/hooks/twilio"

[[sources]]
name = "billing"
scheme = "hmac"
signature_header = "X-Signature"
prefix = "sha256="
signed = "{timestamp}.{body}"
timestamp = "header:X-Timestamp"
id = "header:X-Event-Id"
event_type = "json:/event"
secrets = ["billing-secret"]

[[sources]]
name = "open"
scheme = "none"
insecure = true
"#,
    );
    text
}

const NAMES: &[&str] = &[
    "github",
    "stripe",
    "sw",
    "shopify",
    "slack",
    "gitlab",
    "gitlab-signed",
    "paddle",
    "pagerduty",
    "linear",
    "twitch",
    "zoom",
    "token",
    "twilio",
    "billing",
    "open",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_accepted_for_every_scheme_by_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgate.toml");
    std::fs::write(&config, config_text(dir.path(), "", &every_scheme())).unwrap();
    let mut gw = spawn(&config);
    for name in NAMES {
        let url = format!("http://{}/hooks/{name}", gw.ingest);
        let id = format!("e2e-{name}");
        send_accepted(
            &config,
            name,
            &url,
            &["--event-type", "test.kind", "--id", &id],
        );
    }
    let list = hookgate::cli::client::get(&format!("http://{}/v1/events?limit=100", gw.admin))
        .await
        .unwrap()
        .json();
    let events = list["events"].as_array().unwrap();
    assert_eq!(events.len(), NAMES.len());
    for event in events {
        let source = event["source"].as_str().unwrap();
        // Zoom and the unsigned schemes have no id of their own: a content hash stands in.
        if ["zoom", "token", "open"].contains(&source) {
            assert!(
                event["id"].as_str().unwrap().starts_with("sha256:"),
                "{event}"
            );
        } else {
            assert_eq!(event["id"], format!("e2e-{source}"), "{event}");
        }
        if !["token", "open"].contains(&source) {
            assert_eq!(event["type"], "test.kind", "{event}");
        }
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
}

fn signed(
    scheme: &Scheme,
    secret: &str,
    head: &[(&str, &str)],
    body: &[u8],
) -> (http::HeaderMap, Bytes) {
    let mut out = Outgoing {
        headers: headers(head),
        body: body.to_vec(),
        ..Outgoing::default()
    };
    scheme.sign(
        &Secret::new(secret),
        &mut out,
        unix_seconds(SystemTime::now()),
    );
    (out.headers, Bytes::from(out.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_answered_only_when_signed_and_never_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgate.toml");
    std::fs::write(&config, config_text(dir.path(), "", &every_scheme())).unwrap();
    let mut gw = spawn(&config);
    let addr = gw.ingest;
    let events = |admin| async move {
        hookgate::cli::client::get(&format!("http://{admin}/v1/events"))
            .await
            .unwrap()
            .json()
    };
    let ct = ("content-type", "application/json");

    let slack = br#"{"token":"x","challenge":"c-123","type":"url_verification"}"#;
    let good = post(
        addr,
        "/hooks/slack",
        signed(&Scheme::Slack, "slack-signing-secret", &[ct], slack),
    )
    .await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(good.json(), json!({"challenge": "c-123"}));
    let bad = post(
        addr,
        "/hooks/slack",
        signed(&Scheme::Slack, "wrong", &[ct], slack),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);

    let twitch = br#"{"challenge":"pogchamp","subscription":{"type":"channel.follow"}}"#;
    let head = [
        ct,
        ("twitch-eventsub-message-id", "m-1"),
        (
            "twitch-eventsub-message-type",
            "webhook_callback_verification",
        ),
    ];
    let good = post(
        addr,
        "/hooks/twitch",
        signed(&Scheme::Twitch, "twitch-secret", &head, twitch),
    )
    .await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(good.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(&good.body[..], b"pogchamp");
    let bad = post(
        addr,
        "/hooks/twitch",
        signed(&Scheme::Twitch, "wrong", &head, twitch),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);

    let zoom = br#"{"event":"endpoint.url_validation","payload":{"plainToken":"plain-1"}}"#;
    let good = post(
        addr,
        "/hooks/zoom",
        signed(&Scheme::Zoom, "zoom-secret", &[ct], zoom),
    )
    .await;
    assert_eq!(good.status, StatusCode::OK);
    let expected = hex::encode(hookgate::verify::mac::sign(
        hookgate::verify::mac::Algorithm::Sha256,
        b"zoom-secret",
        &[b"plain-1"],
    ));
    assert_eq!(
        good.json(),
        json!({"plainToken": "plain-1", "encryptedToken": expected})
    );
    let bad = post(
        addr,
        "/hooks/zoom",
        signed(&Scheme::Zoom, "wrong", &[ct], zoom),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);

    let list = events(gw.admin).await;
    assert_eq!(list["events"], json!([]), "handshakes are not events");

    // A revocation notice is an event like any other.
    let revoked = br#"{"subscription":{"type":"channel.follow","status":"authorization_revoked"}}"#;
    let head = [
        ct,
        ("twitch-eventsub-message-id", "m-2"),
        ("twitch-eventsub-message-type", "revocation"),
    ];
    let reply = post(
        addr,
        "/hooks/twitch",
        signed(&Scheme::Twitch, "twitch-secret", &head, revoked),
    )
    .await;
    assert_eq!(reply.json()["status"], "accepted");
    let list = events(gw.admin).await;
    assert_eq!(list["events"][0]["id"], "m-2");
    assert_eq!(list["events"][0]["type"], "channel.follow");
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
}
