//! The CLI as a user runs it: `init`, `check-config`, `health`, and `send` against a running gateway.

mod common;

use std::process::Command;

fn hookgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hookgate"))
}

/// The starter config with the ingest listener on any free port, the admin listener at
/// `admin`, and the journal in `dir`, written to `dir/hookgate.toml`; its text and path.
fn write_starter(dir: &std::path::Path, admin: &str) -> (String, std::path::PathBuf) {
    let starter = hookgate::cli::STARTER
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", admin)
        .replace("data/journal", &dir.join("j").display().to_string());
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, &starter).unwrap();
    (starter, path)
}

#[test]
fn init_writes_a_config_that_checks_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    let out = hookgate()
        .args(["init", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = hookgate()
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains("source github: POST http://127.0.0.1:8080/hooks/github scheme=github"),
        "{text}"
    );
    assert!(
        !text.contains("dev-github-secret"),
        "check-config printed a secret: {text}"
    );
    let again = hookgate()
        .args(["init", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[test]
fn check_config_names_what_is_wrong_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nmax_bodyy = 5\n", "max_bodyy"),
        ("[[sources]]\nname = \"a\"\nscheme = \"nosuch\"\nsecrets = [\"x\"]\n", "nosuch"),
        ("[[sources]]\nname = \"a\"\nscheme = \"none\"\n", "insecure"),
        ("[journal]\nretention = \"7 days\"\n", "retention"),
        ("[[sources]]\nname = \"a\"\nscheme = \"github\"\nsecrets = [\"x\"]\nsigned = \"{body}\"\n", "signed"),
    ];
    for (text, needle) in cases {
        std::fs::write(&path, text).unwrap();
        let out = hookgate()
            .args(["check-config", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "`{needle}` not named in: {stderr}");
    }
    std::fs::write(
        &path,
        "[[sources]]\nname = \"a\"\nscheme = \"github\"\nsecrets = [\"env:HOOKGATE_TEST_UNSET_SECRET\"]\n",
    )
    .unwrap();
    let out = hookgate()
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HOOKGATE_TEST_UNSET_SECRET is not set"),
        "{stdout}"
    );
}

/// `check-config` on `text`, with `env` set and nothing else of hookgate's: exit code
/// and what it printed.
fn check(dir: &std::path::Path, text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, text).unwrap();
    let out = hookgate()
        .args(["check-config", "-c"])
        .arg(&path)
        .env_remove("HOOKGATE_AMQP_URL")
        .env_remove("HOOKGATE_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_config_resolves_what_serve_resolves_and_gives_one_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let deploy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/hookgate.toml"),
    )
    .unwrap();
    let secrets = [
        ("GITHUB_WEBHOOK_SECRET", "g"),
        ("STRIPE_WEBHOOK_SECRET", "s"),
    ];
    // The broker URL and the admin token unset: serve refuses it, so must this.
    let (code, said) = check(dir.path(), &deploy, &secrets);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("broker.url env:HOOKGATE_AMQP_URL: error: environment variable HOOKGATE_AMQP_URL is not set"),
        "{said}"
    );
    assert!(
        said.contains("admin.token env:HOOKGATE_ADMIN_TOKEN: error:"),
        "{said}"
    );
    assert!(
        said.trim_end().ends_with("is not valid: 2 errors"),
        "{said}"
    );
    assert!(!said.contains("is valid"), "{said}");
    // Both listeners bind every interface, and are shown the same way.
    for (name, port) in [("ingest", 8080), ("admin", 9090)] {
        assert!(
            said.contains(&format!("  {name}"))
                && said.contains(&format!(
                "binds 0.0.0.0:{port} (every interface); clients here use http://127.0.0.1:{port}"
            )),
            "{said}"
        );
    }
    let all = [
        secrets[0],
        secrets[1],
        ("HOOKGATE_AMQP_URL", "amqp://u:p@rabbitmq:5672/%2f"),
        ("HOOKGATE_ADMIN_TOKEN", "t"),
    ];
    let (code, said) = check(dir.path(), &deploy, &all);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.trim_end().ends_with("is valid"), "{said}");
    assert!(
        !said.contains("amqp://u:p"),
        "the broker URL was printed: {said}"
    );

    // An unset source secret: its error once, one verdict, last.
    let (code, said) = check(
        dir.path(),
        "[[sources]]\nname = \"a\"\nscheme = \"github\"\nsecrets = [\"env:HOOKGATE_TEST_UNSET_SECRET\"]\n",
        &[],
    );
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(
        said.matches("HOOKGATE_TEST_UNSET_SECRET is not set")
            .count(),
        1,
        "{said}"
    );
    assert!(said.trim_end().ends_with("is not valid: 1 error"), "{said}");
    assert!(!said.contains("is valid"), "{said}");
}

#[test]
fn an_mtls_only_source_is_not_called_unverified() {
    let dir = tempfile::tempdir().unwrap();
    hookgate::cli::certs::gen_certs(dir.path(), "relay.internal").unwrap();
    let tls = format!(
        "[server.tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server-key.pem\"\nclient_ca = \"{d}/ca.pem\"\nclient_auth = \"optional\"\n",
        d = dir.path().display()
    );
    let relay = "[[sources]]\nname = \"relay\"\nscheme = \"none\"\ninsecure = true\n";
    let (code, said) = check(
        dir.path(),
        &format!("{tls}{relay}allowed_client_names = [\"relay.internal\"]\n"),
        &[],
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(!said.contains("verifies nothing"), "{said}");
    assert!(
        said.contains("mTLS only: clients whose certificate names relay.internal"),
        "{said}"
    );
    assert!(
        said.contains("POST https://127.0.0.1:8080/hooks/relay"),
        "{said}"
    );
    let (code, said) = check(dir.path(), &format!("{tls}{relay}"), &[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("warning: scheme none verifies nothing"),
        "{said}"
    );
    assert!(said.trim_end().ends_with("is valid, 1 warning"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_signs_for_each_starter_source() {
    let dir = tempfile::tempdir().unwrap();
    let (starter, path) = write_starter(dir.path(), "127.0.0.1:0");
    let config = hookgate::config::Config::parse(&starter).unwrap();
    let gw = hookgate::start(&config).await.unwrap();
    for source in ["github", "stripe", "orders", "billing"] {
        let url = format!("http://{}/hooks/{source}", gw.ingest_addr);
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            common::send_accepted(&path, source, &url, &["--event-type", "test.ping"])
        })
        .await
        .unwrap();
    }
    let list = common::admin_get(&gw, "/v1/events").await.json();
    let types: Vec<_> = list["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, vec!["test.ping"; 4]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_whether_the_gateway_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (starter, path) = write_starter(dir.path(), &format!("127.0.0.1:{port}"));
    let health = move |extra: &'static [&'static str]| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            hookgate()
                .args(["health", "-c"])
                .arg(&path)
                .args(extra)
                .output()
                .unwrap()
        })
    };

    let down = health(&[]).await.unwrap();
    assert_eq!(down.status.code(), Some(1));
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(said.contains("cannot reach"), "{said}");

    let config = hookgate::config::Config::parse(&starter).unwrap();
    let gw = hookgate::start(&config).await.unwrap();
    for extra in [&[][..], &["--ready"][..]] {
        let up = health(extra).await.unwrap();
        let said = String::from_utf8_lossy(&up.stdout);
        assert!(up.status.success(), "{extra:?}: {said}");
        assert!(said.contains(": 200"), "{said}");
    }
    gw.stop().await;
    assert_eq!(health(&[]).await.unwrap().status.code(), Some(1));
}

#[test]
fn sighup_without_tls_leaves_the_gateway_running() {
    // `systemctl reload` sends SIGHUP whatever the config; it must not stop hookgate.
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = write_starter(dir.path(), "127.0.0.1:0");
    let mut gw = common::spawn(&path);
    let pid = gw.child.id().to_string();
    let signal = |name: &str| Command::new("kill").args([name, &pid]).status().unwrap();
    assert!(signal("-HUP").success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "SIGHUP ended hookgate"
    );
    let url = format!("http://{}/hooks/github", gw.ingest);
    common::send_accepted(&path, "github", &url, &[]);
    assert!(signal("-TERM").success());
    assert!(gw.child.wait().unwrap().success());
}

#[test]
fn serve_runs_as_many_request_threads_as_server_threads_says() {
    // The count comes from the running runtime (its "ingest listening" line), and each
    // gateway takes an event on it. Without the key, tokio's default: TOKIO_WORKER_THREADS
    // if set, else one per CPU; the key wins over the variable.
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (threads, env, expected) in [
        (None, None, cpus),
        (None, Some("3"), 3),
        (Some(3), None, 3),
        (Some(1), Some("3"), 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (starter, path) = write_starter(dir.path(), "127.0.0.1:0");
        if let Some(n) = threads {
            let text = starter.replacen("[server]\n", &format!("[server]\nthreads = {n}\n"), 1);
            std::fs::write(&path, text).unwrap();
        }
        let log = dir.path().join("hookgate.log");
        let env: Vec<_> = env
            .map(|n| ("TOKIO_WORKER_THREADS", n))
            .into_iter()
            .collect();
        let (mut child, ingest, _) = common::spawn_logged(&path, &log, &env);
        let said = common::logged(&log, "ingest listening")
            .iter()
            .find_map(|entry| entry["fields"]["threads"].as_u64());
        assert_eq!(
            said,
            Some(expected as u64),
            "threads = {threads:?}, TOKIO_WORKER_THREADS = {env:?}: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let url = format!("http://{ingest}/hooks/github");
        common::send_accepted(&path, "github", &url, &[]);
        assert!(common::terminate(&mut child).success());
    }
}

#[test]
fn a_tokio_worker_threads_it_cannot_use_is_an_error_not_a_panic() {
    // tokio reads the variable itself when it is given no number, and panics on `0` or
    // `two`; hookgate reads it first. serve, check-config and a client command each name
    // it and exit 1.
    let dir = tempfile::tempdir().unwrap();
    let (starter, path) = write_starter(dir.path(), "127.0.0.1:0");
    let run = |args: &[&str], value: &str| {
        let out = hookgate()
            .args(args)
            .arg(&path)
            .env("TOKIO_WORKER_THREADS", value)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    for value in ["0", "two"] {
        for args in [
            &["serve", "-c"][..],
            &["check-config", "-c"],
            &["health", "-c"],
        ] {
            let (code, said) = run(args, value);
            assert_eq!(code, Some(1), "{args:?} with {value:?}: {said}");
            assert!(
                said.contains(&format!(
                    "TOKIO_WORKER_THREADS must be a number of threads between 1 and 1024, not {value:?}"
                )),
                "{args:?} with {value:?}: {said}"
            );
            assert!(!said.contains("panicked"), "{args:?}: {said}");
        }
    }
    // With `server.threads` set, serve does not read the variable, and the check passes.
    let text = starter.replacen("[server]\n", "[server]\nthreads = 1\n", 1);
    std::fs::write(&path, text).unwrap();
    let (code, said) = run(&["check-config", "-c"], "two");
    assert_eq!(code, Some(0), "{said}");
}

/// `THP_enabled` of `/proc/{pid}/status`: `1` unless transparent huge pages are off for
/// the process.
fn thp_enabled(pid: impl std::fmt::Display) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .expect("the kernel says whether THP is on for a process")
        .trim()
        .to_string()
}

#[test]
fn serve_turns_huge_pages_off_unless_mimalloc_is_told_otherwise() {
    // Zeroing a fresh 2 MiB page on the committer held every append for 10-20 ms
    // (BENCHMARKS.md), so hookgate turns transparent huge pages off for itself. With
    // MIMALLOC_ALLOW_THP set, it leaves them as they were (a child keeps its parent's).
    let inherited = thp_enabled("self");
    for (env, expected) in [(None, "0"), (Some("1"), inherited.as_str())] {
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = write_starter(dir.path(), "127.0.0.1:0");
        let log = dir.path().join("hookgate.log");
        let env: Vec<_> = env.map(|v| ("MIMALLOC_ALLOW_THP", v)).into_iter().collect();
        let (mut child, ingest, _) = common::spawn_logged(&path, &log, &env);
        let thp = thp_enabled(child.id());
        let url = format!("http://{ingest}/hooks/github");
        common::send_accepted(&path, "github", &url, &[]);
        // Stopped before the check, so that a failing check leaves no gateway running.
        assert!(common::terminate(&mut child).success());
        assert_eq!(thp, expected, "{env:?}");
    }
}

#[test]
fn a_fresh_init_has_a_token_that_the_events_commands_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    let init = hookgate()
        .args(["init", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(init.status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{port}"))
        .replace("data/journal", &dir.path().join("j").display().to_string());
    assert!(text.contains("\ntoken = \"hga_"), "{text}");
    std::fs::write(&path, text).unwrap();

    let mut gw = common::spawn(&path);
    let url = format!("http://{}/hooks/github", gw.ingest);
    common::send_accepted(&path, "github", &url, &[]);
    // Without the token the API refuses; the CLI reads it from the config.
    let open = hookgate()
        .args(["events", "list", "--token", "wrong", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!open.status.success());
    let list = hookgate()
        .args(["events", "list", "--json", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(said.contains("\"source\":\"github\""), "{said}");
    let _ = gw.child.kill();
    let _ = gw.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_one_journal_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (starter, path) = write_starter(dir.path(), "127.0.0.1:0");
    let config = hookgate::config::Config::parse(&starter).unwrap();
    let gw = hookgate::start(&config).await.unwrap();
    let second = tokio::task::spawn_blocking(move || {
        hookgate()
            .args(["serve", "-c"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains(&format!(
            "another hookgate is using this journal (PID {})",
            std::process::id()
        )),
        "{said}"
    );
    assert!(!said.contains("WouldBlock"), "{said}");
    gw.stop().await;
}

/// `hookgate ARGS…` run off the async runtime; its exit code and stdout + stderr.
async fn run(args: Vec<String>) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let out = hookgate().args(&args).output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_events_speak_https_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    hookgate::cli::certs::gen_certs(dir.path(), "client.local").unwrap();
    let tls = |table: &str| {
        format!(
            "\n[{table}]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server-key.pem\"\nclient_ca = \"{d}/ca.pem\"\nclient_auth = \"required\"\n"
        )
    };
    // A fixed admin port: `health` finds the admin listener in the config.
    let admin_at = format!("127.0.0.1:{}", common::free_port());
    let (starter, path) = write_starter(dir.path(), &admin_at);
    let text = format!("{starter}{}{}", tls("server.tls"), tls("admin.tls"));
    std::fs::write(&path, text).unwrap();
    let gw = common::spawn(&path);
    let config = path.display().to_string();
    let ca = format!("{d}/ca.pem");
    let mtls = [
        "--cacert".to_string(),
        ca.clone(),
        "--cert".to_string(),
        format!("{d}/client.pem"),
        "--key".to_string(),
        format!("{d}/client-key.pem"),
    ];
    let url = format!("https://127.0.0.1:{}/hooks/github", gw.ingest.port());
    let mut send = strings(&["send", "--source", "github", "-c", &config, "--url", &url]);
    send.extend(mtls.iter().cloned());
    let (code, said) = run(send).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("\"status\":\"accepted\""), "{said}");
    // Without a client certificate the handshake is refused.
    let (code, said) = run(strings(&[
        "send", "--source", "github", "-c", &config, "--url", &url, "--cacert", &ca,
    ]))
    .await;
    assert_eq!(code, Some(1), "{said}");
    // --cacert is for https only.
    let plain = format!("http://127.0.0.1:{}/hooks/github", gw.ingest.port());
    let (code, said) = run(strings(&[
        "send", "--source", "github", "-c", &config, "--url", &plain, "--cacert", &ca,
    ]))
    .await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("are for https:// URLs"), "{said}");

    let admin = format!("https://127.0.0.1:{}", gw.admin.port());
    let mut list = strings(&["events", "list", "-c", &config, "--admin", &admin]);
    list.extend(mtls.iter().cloned());
    let (code, said) = run(list).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("github") && said.contains("hookgate.test"),
        "{said}"
    );
    let mut show = strings(&["events", "show", "1", "-c", &config, "--admin", &admin]);
    show.extend(mtls.iter().cloned());
    let (code, said) = run(show).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("\"source\": \"github\""), "{said}");
    // The health check speaks https under [admin.tls], with the same options.
    let mut health = strings(&["health", "-c", &config]);
    health.extend(mtls.iter().cloned());
    let (code, said) = run(health).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("/healthz: 200"), "{said}");
    let (code, said) = run(strings(&["health", "-c", &config, "--cacert", &ca])).await;
    assert_eq!(code, Some(1), "no client certificate: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_prints_the_answer_to_a_body_over_the_limit_and_asks_for_a_content_type() {
    let dir = tempfile::tempdir().unwrap();
    let (starter, path) = write_starter(dir.path(), "127.0.0.1:0");
    let starter = starter.replacen("[server]\n", "[server]\nmax_inflight_bytes = \"2MiB\"\n", 1);
    std::fs::write(&path, starter).unwrap();
    let gw = common::spawn(&path);
    let config = path.display().to_string();
    let url = format!("http://{}/hooks/github", gw.ingest);
    // Far over max_body (1 MiB): the gateway answers 413 before reading it and closes.
    let big = dir.path().join("big.json");
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 << 20));
    std::fs::write(&big, body).unwrap();
    let big = big.display().to_string();
    for _ in 0..5 {
        let (code, said) = run(strings(&[
            "send", "--source", "github", "-c", &config, "--url", &url, "--body", &big,
        ]))
        .await;
        assert_eq!(code, Some(1), "{said}");
        assert!(said.contains("-> 413 Payload Too Large"), "{said}");
        assert!(said.contains("\"payload_too_large\""), "{said}");
        assert!(!said.contains("Broken pipe"), "{said}");
    }
    let text = dir.path().join("p.txt");
    std::fs::write(&text, "a=1").unwrap();
    let text = text.display().to_string();
    let (code, said) = run(strings(&[
        "send", "--source", "github", "-c", &config, "--url", &url, "--body", &text,
    ]))
    .await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("pass --content-type"), "{said}");
    let (code, said) = run(strings(&[
        "send",
        "--source",
        "github",
        "-c",
        &config,
        "--url",
        &url,
        "--body",
        &text,
        "--content-type",
        "application/x-www-form-urlencoded",
    ]))
    .await;
    assert_eq!(code, Some(0), "{said}");
}

/// `events show` prints an event whose payload serde_json will not parse into a value (a
/// lone surrogate escape, nesting past 128 levels) as the API answered it, payload and
/// all, and indents the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_prints_payloads_a_value_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(dir.path(), "", common::GITHUB_SOURCE);
    let gw = hookgate::start(&hookgate::config::Config::parse(&text).unwrap())
        .await
        .unwrap();
    let surrogate = r#"{"text": "\ud800 alone"}"#;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for (id, payload) in [
        ("odd-surrogate", surrogate),
        ("odd-deep", deep.as_str()),
        ("plain", r#"{"a":1}"#),
    ] {
        let reply = common::post(
            gw.ingest_addr,
            "/hooks/github",
            common::github(id, "push", "application/json", payload.as_bytes()),
        )
        .await;
        assert_eq!(reply.status, http::StatusCode::OK);
    }
    let admin = format!("http://{}", gw.admin_addr);
    let show = |seq: &str| strings(&["events", "show", seq, "--admin", &admin]);

    let (code, said) = run(show("1")).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(r#""id":"odd-surrogate""#), "{said}");
    assert!(
        said.contains(&format!(r#""payload":{surrogate}"#)),
        "{said}"
    );
    let (code, said) = run(show("2")).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(&format!(r#""payload":{deep}"#)), "{said}");
    let (code, said) = run(show("3")).await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("\"id\": \"plain\""), "indented: {said}");
    assert!(said.contains("\"payload\": {\n    \"a\": 1\n  }"), "{said}");
    gw.stop().await;
}
