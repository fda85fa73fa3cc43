#!/usr/bin/env bash
# How long a push subscription's worker keeps hookgate's one request thread busy when a
# paused subscription with a large backlog is made active (BENCHMARKS.md, "A slow day").
# The worker's first fill reads up to 10,000 pending deliveries; where that read runs
# decides whether requests wait for it.
# Once: the first BINARY journals EVENTS signed pushes (100,000 by default) with an active
# subscription whose endpoint refuses connections, so each stays pending, and then pauses
# the subscription. Then, ROUNDS times (2), each BINARY in turn gets a copy of that
# journal with the page cache dropped, starts with `server.threads = 1`, and has the
# subscription made active while `strace -T -tt` follows its request thread. Printed: the
# longest stretch without a system call on that thread in the 2 s after the PATCH.
# Needs root (to drop the page cache), strace, wrk, curl and a release build.
# Usage: loadtest/wrk/stall.sh BINARY [BINARY...]
set -Eeuo pipefail
trap 'echo "$0: stopped: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
cd "$(dirname "$0")/../.."
(($# > 0)) || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
((EUID == 0)) || { echo "$0: needs root, to drop the page cache" >&2; exit 2; }
export HOOKGATE_BENCH_SIGS=${SIGS:-/tmp/hookgate-sigs.txt}
[[ -s $HOOKGATE_BENCH_SIGS ]] || python3 loadtest/wrk/sign.py 1000000 "$HOOKGATE_BENCH_SIGS"
dir=$(mktemp -d /tmp/hookgate-stall.XXXXXX)
server_pid=
trap 'kill $server_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
admin=http://127.0.0.1:9190
cat >"$dir/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:8180"
threads = 1
[admin]
listen = "127.0.0.1:9190"
[journal]
path = "$dir/journal"
max_backlog = 100000000
[outbound]
allow_private = ["127.0.0.0/8"]
[[sources]]
name = "github"
scheme = "github"
secrets = ["bench-github-secret"]
EOF

start() { # BINARY
  HOOKGATE_LOG=warn "$1" serve -c "$dir/gateway.toml" >/dev/null 2>"$dir/hookgate.log" &
  server_pid=$!
  local waited=0
  until curl -sf -o /dev/null "$admin/healthz"; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$dir/hookgate.log" >&2; exit 1; }
    ((++waited < 400)) || { echo "$1 did not start within 20 s" >&2; exit 1; }
    sleep 0.05
  done
}
stop() {
  kill -INT "$server_pid"
  wait "$server_pid" || true
  server_pid=
}
active() { # true|false
  curl -sf -o /dev/null -X PATCH "$admin/v1/subscriptions/$sub" \
    -H 'content-type: application/json' -d "{\"active\":$1}"
}

start "$1"
sub=$(curl -sf -X POST "$admin/v1/subscriptions" -H 'content-type: application/json' \
  -d '{"name":"down","url":"http://127.0.0.1:1/hook","events":["*:*"]}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
HOOKGATE_BENCH_LIMIT=${EVENTS:-100000} wrk -t1 -c32 -d120s -s loadtest/wrk/github.lua \
  http://127.0.0.1:8180/hooks/github >/dev/null
active false
pending=$(curl -sf "$admin/v1/subscriptions/$sub" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["pending"])')
stop
mv "$dir/journal" "$dir/backlog"
echo "a paused subscription with $pending pending deliveries; one request thread"

for round in $(seq "${ROUNDS:-2}"); do
  for bin in "$@"; do
    rm -rf "$dir/journal"
    cp -a "$dir/backlog" "$dir/journal"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    start "$bin"
    sleep 1
    tid=$(grep -l '^tokio-rt-worker$' /proc/"$server_pid"/task/*/comm | head -1 | cut -d/ -f5)
    timeout 4 strace -T -tt -p "$tid" -o "$dir/strace.txt" 2>/dev/null &
    tracer=$!
    sleep 0.5
    active true
    wait "$tracer" || true
    stop
    # From the PATCH's arrival: the longest time between one system call's end and the
    # next one's start, that is, on the CPU without a call (a wait in epoll_wait ends
    # before the stretch is counted, so idle time is not in it).
    awk -v bin="$bin" -v round="$round" '
      /recvfrom.*PATCH/ { found = 1 }
      { split($1, t, ":"); at = t[1] * 3600 + t[2] * 60 + t[3]; took = $NF; gsub(/[<>]/, "", took) }
      found && !start { start = at }
      found && at - start > 2 { exit }
      found && ended && at - ended > longest { longest = at - ended }
      { ended = at + took }
      END { printf "round %d  %-40s longest stretch without a system call: %.1f ms\n", round, bin, longest * 1000 }
    ' "$dir/strace.txt"
  done
done
