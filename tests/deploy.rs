//! The deploy kit (`deploy/`) checked with what this machine has: the config every
//! deployment shares loads and agrees with the Kubernetes ConfigMap, and the systemd
//! unit, the compose file and the Kubernetes manifests pass their own validators
//! (`systemd-analyze`, `docker-compose config`, `kubernetes-validate`). `.ci/run`
//! installs the validators; elsewhere a missing one is reported (`SKIPPED …` in what
//! `cargo test` prints) and its check skipped.
//! The Docker image itself cannot be built here (no Docker engine).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Whether `tool` runs; in CI a missing validator is a failure, not a skip. A skip is
/// written to the process's stderr itself, not through `eprintln!` (which the test
/// harness captures and shows only for failures), so that `cargo test` shows it.
fn have(tool: &str, test: &str) -> bool {
    use std::io::Write;
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing; .ci/run installs it"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {tool} is not installed (.ci/run installs it; in CI this fails)"
        );
    }
    found
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `hookgate check-config` of `config` with the kit's environment.
fn check_config(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check-config", "-c"])
        .arg(config)
        .env("HOOKGATE_ADMIN_TOKEN", "t")
        .env("HOOKGATE_AMQP_URL", "amqp://u:p@rabbitmq:5672/%2f")
        .env(
            "HOOKGATE_AMQP_URL_0",
            "amqp://u:p@rabbitmq-server-0.rabbitmq-nodes:5672/%2f",
        )
        .env(
            "HOOKGATE_AMQP_URL_1",
            "amqp://u:p@rabbitmq-server-1.rabbitmq-nodes:5672/%2f",
        )
        .env(
            "HOOKGATE_AMQP_URL_2",
            "amqp://u:p@rabbitmq-server-2.rabbitmq-nodes:5672/%2f",
        )
        .env("GITHUB_WEBHOOK_SECRET", "g")
        .env("STRIPE_WEBHOOK_SECRET", "s")
        .output()
        .unwrap()
}

/// The broker.url line: one address in the shared config, the cluster's three nodes in
/// the Kubernetes ConfigMap.
const ONE_BROKER: &str = "url = \"env:HOOKGATE_AMQP_URL\"\n";
const THREE_NODES: &str =
    "url = [\"env:HOOKGATE_AMQP_URL_0\", \"env:HOOKGATE_AMQP_URL_1\", \"env:HOOKGATE_AMQP_URL_2\"]\n";

#[test]
fn the_shared_config_loads_and_the_configmap_holds_it_word_for_word() {
    let output = check_config(&deploy("hookgate.toml"));
    assert!(output.status.success(), "{}", said(&output));

    let toml = std::fs::read_to_string(deploy("hookgate.toml")).unwrap();
    let configmap = std::fs::read_to_string(deploy("k8s/configmap.yaml")).unwrap();
    let key = "hookgate.toml: |\n";
    let block = &configmap[configmap.find(key).unwrap() + key.len()..];
    let embedded: String = block
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    assert!(toml.contains(ONE_BROKER) && embedded.contains(THREE_NODES));
    assert_eq!(
        embedded,
        toml.replace(ONE_BROKER, THREE_NODES),
        "k8s/configmap.yaml differs from hookgate.toml (but for broker.url)"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("configmap.toml");
    std::fs::write(&path, &embedded).unwrap();
    let output = check_config(&path);
    assert!(output.status.success(), "{}", said(&output));
    assert!(
        said(&output).contains(
            "broker.url[2] env:HOOKGATE_AMQP_URL_2: resolves, node rabbitmq-server-2.rabbitmq-nodes:5672"
        ),
        "{}",
        said(&output)
    );
    // Each node's URL is set by the StatefulSet.
    let statefulset = std::fs::read_to_string(deploy("k8s/statefulset.yaml")).unwrap();
    for n in 0..3 {
        assert!(
            statefulset.contains(&format!("- name: HOOKGATE_AMQP_URL_{n}\n"))
                && statefulset.contains(&format!("rabbitmq-server-{n}.rabbitmq-nodes:5672")),
            "statefulset.yaml sets HOOKGATE_AMQP_URL_{n}"
        );
    }
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if !have(
        "systemd-analyze",
        "the_systemd_unit_verifies_and_is_hardened",
    ) {
        return;
    }
    // verify wants ExecStart's binary to exist: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy("systemd/hookgate.service"))
        .unwrap()
        .replace("/usr/local/bin/hookgate", env!("CARGO_BIN_EXE_hookgate"));
    let path = dir.path().join("hookgate.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    // It exits 0 on unknown keys and bad values too, and says so: silence is the pass.
    assert!(
        verify.status.success() && said(&verify).trim().is_empty(),
        "{}",
        said(&verify)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&path)
        .output()
        .unwrap();
    let text = said(&security);
    let level: f64 = text
        .split("Overall exposure level for hookgate.service: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(level <= 2.0, "exposure {level}: {text}");
}

#[test]
fn the_compose_file_is_valid() {
    if !have("docker-compose", "the_compose_file_is_valid") {
        return;
    }
    let output = Command::new("docker-compose")
        .arg("-f")
        .arg(deploy("compose.yaml"))
        .args(["config", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", said(&output));
}

#[test]
fn the_kubernetes_manifests_validate_strictly() {
    if !have(
        "kubernetes-validate",
        "the_kubernetes_manifests_validate_strictly",
    ) {
        return;
    }
    // rabbitmq.yaml (a RabbitmqCluster) and kustomization.yaml have no schema here.
    let files = [
        "configmap.yaml",
        "secret.yaml",
        "statefulset.yaml",
        "service.yaml",
        "pdb.yaml",
    ];
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .args(files.iter().map(|f| deploy(&format!("k8s/{f}"))))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", said(&output));
    let kustomization = std::fs::read_to_string(deploy("k8s/kustomization.yaml")).unwrap();
    for file in files.iter().chain(&["rabbitmq.yaml"]) {
        assert!(
            kustomization.contains(&format!("  - {file}\n")),
            "kustomization.yaml leaves out {file}"
        );
    }
}
