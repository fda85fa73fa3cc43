#!/usr/bin/env bash
# HTTPS figures, one run: the same client (hookgate-loadtest post) sends signed 1.5 KB
# GitHub pushes to hookgate over plain HTTP/1.1 and over mutual TLS on keep-alive
# connections, then over mutual TLS with a new connection, and so a full handshake (no
# resumption), for every request.
# Needs: cargo build --release --workspace
# Usage: loadtest/wrk/tls.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-64}
bin=target/release
work=/tmp/hookgate-tls
rm -rf "$work" && mkdir -p "$work"
"$bin/hookgate" gen-certs --out "$work/certs" --client-name bench.client >/dev/null

config() { # $1: extra [server.tls] table or nothing
  cat >"$work/hookgate.toml" <<TOML
[server]
listen = "127.0.0.1:8443"
$1
[admin]
listen = "127.0.0.1:9090"
[journal]
path = "$work/journal"
max_backlog = 100000000
[[sources]]
name = "github"
scheme = "github"
secrets = ["bench-github-secret"]
$( [ -n "$1" ] && echo 'allowed_client_names = ["bench.client"]' )
TOML
}
gate_pid=
trap 'kill $gate_pid 2>/dev/null || true' EXIT
start_gate() {
  rm -rf "$work/journal"
  HOOKGATE_LOG=warn "$bin/hookgate" serve -c "$work/hookgate.toml" 2>>"$work/hookgate.log" &
  gate_pid=$!
  until curl -sf http://127.0.0.1:9090/healthz >/dev/null; do sleep 0.05; done
}
stop_gate() { kill -TERM "$gate_pid"; wait "$gate_pid" || true; }
post() { "$bin/hookgate-loadtest" post --addr 127.0.0.1:8443 --connections "$conns" --seconds "$secs" "$@"; }
mtls=(--mtls "$work/certs/ca.pem" "$work/certs/client.pem" "$work/certs/client-key.pem")

config ""
start_gate
echo "plain HTTP/1.1, keep-alive:   $(post)"
stop_gate

config "[server.tls]
cert = \"$work/certs/server.pem\"
key = \"$work/certs/server-key.pem\"
client_ca = \"$work/certs/ca.pem\"
client_auth = \"required\""
start_gate
echo "mTLS, keep-alive:             $(post "${mtls[@]}")"
echo "mTLS, new connection each:    $(post "${mtls[@]}" --new-connection-each)"
stop_gate
