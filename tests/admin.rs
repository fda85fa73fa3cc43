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
            github(&format!("l-{i}"), event, "application/json", b"{}"),
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
    let none = admin_get(&gw, "/v1/events?source=stripe").await.json();
    assert_eq!(seqs(&none), Vec::<u64>::new());
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
    assert_eq!(one["payload"], json!({}));
    assert_eq!(one["attempts_log"], json!([]));
    assert!(one["received_at"].as_str().unwrap().ends_with('Z'));
    gw.stop().await;
}

#[tokio::test]
async fn events_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let r = post(
        gw.ingest_addr,
        "/hooks/github",
        github("r-1", "push", "application/json", b"{}"),
    )
    .await;
    assert_eq!(r.json()["status"], "accepted");
    gw.stop().await;

    let gw = start(dir.path(), "", GITHUB_SOURCE).await;
    let again = post(
        gw.ingest_addr,
        "/hooks/github",
        github("r-1", "push", "application/json", b"{}"),
    )
    .await;
    assert_eq!(
        again.json(),
        json!({"status": "duplicate", "id": "r-1", "seq": 1})
    );
    let next = post(
        gw.ingest_addr,
        "/hooks/github",
        github("r-2", "push", "application/json", b"{}"),
    )
    .await;
    assert_eq!(
        next.json()["seq"],
        2,
        "sequence numbers continue after a restart"
    );
    gw.stop().await;
}
