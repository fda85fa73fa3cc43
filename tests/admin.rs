//! The admin listener: health, readiness, and the pull API's filters and cursor.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    assert_eq!(admin_get(&gw, "/healthz").await.status, StatusCode::OK);
    let ready = admin_get(&gw, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
    assert_eq!(
        admin_get(&gw, "/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    gw.stop().await;
}

#[tokio::test]
async fn listing_filters_and_pages_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    for i in 0..7 {
        let event = if i % 2 == 0 { "push" } else { "issues" };
        let r = post(
            gw.ingest_addr,
            "/hooks/github",
            github(
                &format!("l-{i}"),
                event,
                "application/json",
                &delivery_body(format!("l-{i}")),
            ),
        )
        .await;
        assert_eq!(r.json()["status"], "accepted");
    }
    let seqs = |v: &serde_json::Value| -> Vec<u64> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };

    let page = admin_get(&gw, "/v1/events?limit=3").await.json();
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    assert_eq!(page["next_after"], 3);
    let page = admin_get(&gw, "/v1/events?limit=3&after=3").await.json();
    assert_eq!(seqs(&page), vec![4, 5, 6]);
    let page = admin_get(&gw, "/v1/events?after=6").await.json();
    assert_eq!(seqs(&page), vec![7]);
    let page = admin_get(&gw, "/v1/events?after=7").await.json();
    assert_eq!(seqs(&page), Vec::<u64>::new());
    assert_eq!(page["next_after"], 7, "an empty page keeps the cursor");

    let issues = admin_get(&gw, "/v1/events?type=issues").await.json();
    assert_eq!(seqs(&issues), vec![2, 4, 6]);
    // No stripe source is configured, and none has events: a 400, not an empty list.
    let none = admin_get(&gw, "/v1/events?source=stripe").await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    assert_eq!(none.json()["error"], "unknown_source");
    let queued = admin_get(
        &gw,
        "/v1/events?source=github&status=queued&type=push&limit=2",
    )
    .await
    .json();
    assert_eq!(seqs(&queued), vec![1, 3]);
    let delivered = admin_get(&gw, "/v1/events?status=delivered").await.json();
    assert_eq!(seqs(&delivered), Vec::<u64>::new());

    for bad in [
        "status=lost",
        "after=x",
        "limit=0",
        "limit=5000",
        "colour=red",
    ] {
        let reply = admin_get(&gw, &format!("/v1/events?{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.json()["error"], "bad_request");
    }
    let missing = admin_get(&gw, "/v1/events/99").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "not_found");
    assert_eq!(
        admin_get(&gw, "/v1/events/abc").await.status,
        StatusCode::BAD_REQUEST
    );

    let one = admin_get(&gw, "/v1/events/2").await.json();
    assert_eq!(one["id"], "l-1");
    assert_eq!(one["payload"], json!({"delivery": "l-1"}));
    assert_eq!(one["attempts_log"], json!([]));
    assert!(one["received_at"].as_str().unwrap().ends_with('Z'));
    gw.stop().await;
}

#[tokio::test]
async fn an_event_is_found_by_its_id_and_a_source_typo_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    for id in ["find-1", "find-10", "find-2"] {
        let r = post(
            gw.ingest_addr,
            "/hooks/github",
            github(id, "push", "application/json", &delivery_body(id)),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let found = admin_get(&gw, "/v1/events?id=find-1").await.json();
    let seqs: Vec<u64> = found["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1], "exact, not a prefix: {found}");
    let none = admin_get(&gw, "/v1/events?id=find").await.json();
    assert_eq!(none["events"], json!([]));
    let both = admin_get(&gw, "/v1/events?id=find-2&source=github")
        .await
        .json();
    assert_eq!(both["events"][0]["seq"], 3);

    let typo = admin_get(&gw, "/v1/events?source=githb").await;
    assert_eq!(typo.status, StatusCode::BAD_REQUEST);
    assert_eq!(typo.json()["error"], "unknown_source");
    assert!(
        typo.json()["message"]
            .as_str()
            .unwrap()
            .contains("configured: github"),
        "{:?}",
        typo.json()
    );
    // The gateway's own operational events have a source of their own.
    let own = admin_get(&gw, "/v1/events?source=hookgate").await;
    assert_eq!(own.status, StatusCode::OK);
    let replay = hookgate::cli::client::request(
        http::Method::POST,
        &format!("http://{}/v1/replay?source=githb", gw.admin_addr),
        http::HeaderMap::new(),
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    gw.stop().await;
}

#[tokio::test]
async fn events_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let r = post(
        gw.ingest_addr,
        "/hooks/github",
        github("r-1", "push", "application/json", &delivery_body("r-1")),
    )
    .await;
    assert_eq!(r.json()["status"], "accepted");
    gw.stop().await;

    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let again = post(
        gw.ingest_addr,
        "/hooks/github",
        github("r-1", "push", "application/json", &delivery_body("r-1")),
    )
    .await;
    assert_eq!(
        again.json(),
        json!({"status": "duplicate", "id": "r-1", "seq": 1})
    );
    let next = post(
        gw.ingest_addr,
        "/hooks/github",
        github("r-2", "push", "application/json", &delivery_body("r-2")),
    )
    .await;
    assert_eq!(
        next.json()["seq"],
        2,
        "sequence numbers continue after a restart"
    );
    gw.stop().await;
}

/// A request whose body is still arriving when the stop begins is finished, answered and
/// journaled; new connections are refused once the stop has begun.
#[tokio::test]
async fn a_graceful_stop_drains_requests_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let addr = gw.ingest_addr;
    let (headers, body) = github("drain-1", "push", "application/json", b"{\"slow\":true}");
    let mut head = format!(
        "POST /hooks/github HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let stopping = tokio::spawn(gw.stop());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after the stop began"
    );
    stream.write_all(&body[5..]).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"accepted\""), "{text}");
    stopping.await.unwrap();

    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let list = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(list["events"][0]["id"], "drain-1");
    gw.stop().await;
}

#[tokio::test]
async fn the_admin_token_guards_v1_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", GITHUB_SOURCE).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-admin-token\"",
    );
    let config = hookgate::config::Config::parse(&text).unwrap();
    let gw = hookgate::start(&config).await.unwrap();
    let url = format!("http://{}/v1/events", gw.admin_addr);
    let with = |value: &'static str| headers(&[("authorization", value)]);
    let get = |h| hookgate::cli::client::request(http::Method::GET, &url, h, bytes::Bytes::new());

    let missing = get(http::HeaderMap::new()).await.unwrap();
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"], "unauthorized");
    assert!(!String::from_utf8_lossy(&missing.body).contains("s3cret"));
    assert_eq!(
        get(with("Bearer wrong")).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(with("s3cret-admin-token")).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(with("Bearer s3cret-admin-token")).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(admin_get(&gw, "/healthz").await.status, StatusCode::OK);
    gw.stop().await;
}

/// A request to the admin listener with these headers (the client sets Host from the URL
/// unless one is given).
async fn admin_call(
    gw: &hookgate::Running,
    method: http::Method,
    path: &str,
    pairs: &[(&str, &str)],
) -> hookgate::cli::client::Reply {
    hookgate::cli::client::request(
        method,
        &format!("http://{}{path}", gw.admin_addr),
        headers(pairs),
        bytes::Bytes::new(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_rebound_name_is_misdirected_and_other_sites_cannot_replay() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let r = post(
        gw.ingest_addr,
        "/hooks/github",
        github(
            "g-1",
            "push",
            "application/json",
            b"{\"secret\":\"payload\"}",
        ),
    )
    .await;
    assert_eq!(r.json()["status"], "accepted");
    use http::Method;

    // DNS rebinding: the page's own name, now resolving to the admin address.
    for path in ["/v1/events", "/v1/events/1", "/metrics"] {
        let rebound = admin_call(&gw, Method::GET, path, &[("host", "evil.example:9090")]).await;
        assert_eq!(rebound.status, StatusCode::MISDIRECTED_REQUEST, "{path}");
        assert_eq!(rebound.json()["error"], "misdirected_request");
        assert!(!String::from_utf8_lossy(&rebound.body).contains("payload"));
        assert!(!rebound.headers.contains_key("access-control-allow-origin"));
    }
    // Health checks answer by any name.
    let health = admin_call(&gw, Method::GET, "/healthz", &[("host", "hookgate.svc")]).await;
    assert_eq!(health.status, StatusCode::OK);

    // A cross-site form or fetch cannot replay.
    let replay = "/v1/events/1/replay";
    let cross = admin_call(
        &gw,
        Method::POST,
        replay,
        &[("origin", "http://evil.example")],
    )
    .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert_eq!(cross.json()["error"], "cross_origin");
    let cross = admin_call(
        &gw,
        Method::POST,
        replay,
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    let events = admin_get(&gw, "/v1/events").await.json();
    assert_eq!(
        events["events"].as_array().unwrap().len(),
        1,
        "nothing was replayed"
    );

    // The same origin (the console, a page served by the admin listener) and tools that
    // send no Origin (the CLI, curl) still can.
    let origin = format!("http://{}", gw.admin_addr);
    let same = admin_call(
        &gw,
        Method::POST,
        replay,
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(same.status, StatusCode::ACCEPTED, "{same:?}");
    let tool = admin_call(&gw, Method::POST, replay, &[]).await;
    assert_eq!(tool.status, StatusCode::ACCEPTED, "{tool:?}");
    gw.stop().await;
}

#[tokio::test]
async fn admin_hosts_adds_names() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", GITHUB_SOURCE).replace(
        "[admin]\n",
        "[admin]\nhosts = [\"hookgate-admin.internal\"]\n",
    );
    let config = hookgate::config::Config::parse(&text).unwrap();
    let gw = hookgate::start(&config).await.unwrap();
    let named = admin_call(
        &gw,
        http::Method::GET,
        "/v1/events",
        &[("host", "Hookgate-Admin.internal:9090")],
    )
    .await;
    assert_eq!(named.status, StatusCode::OK);
    let other = admin_call(
        &gw,
        http::Method::GET,
        "/v1/events",
        &[("host", "other.internal")],
    )
    .await;
    assert_eq!(other.status, StatusCode::MISDIRECTED_REQUEST);
    gw.stop().await;
}
