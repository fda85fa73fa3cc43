#!/usr/bin/env bash
# Allocations and frees per request of one or more hookgate builds, by thread: counted by
# uprobes on mimalloc's allocation fast path (`_mi_page_malloc_zero`, which every small
# allocation passes through) and on `mi_free`, so the figures do not move with the
# machine's load. A block freed on another thread than the one that made it (a request's
# strings, made on the request path and freed by the committer or the indexer) costs more
# than one freed where it was made: compare the request path's allocations with the
# committer's and indexer's frees (BENCHMARKS.md, 2026-12-07, fifth session).
# Each build serves loadtest/wrk/bench.toml on a fresh journal: 2,000 requests unmeasured,
# then 5,000 (wrk -c8, every request a new signed body) counted.
# Needs root (uprobes), perf, wrk and a release build.
# Usage: loadtest/wrk/allocations.sh BINARY [BINARY...]
set -Eeuo pipefail
# A command that fails ends the script (set -e); say which, rather than stop silently.
trap 'echo "$0: stopped: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
cd "$(dirname "$0")/../.."
(($# > 0)) || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
export HOOKGATE_BENCH_SIGS=${SIGS:-/tmp/hookgate-sigs.txt}
[[ -s $HOOKGATE_BENCH_SIGS ]] || python3 loadtest/wrk/sign.py 1000000 "$HOOKGATE_BENCH_SIGS"
out=$(mktemp -d /tmp/hookgate-allocations.XXXXXX)
server_pid=
remove_probes() { perf probe -q -d 'hookgate_allocations:*' >/dev/null 2>&1 || true; }
trap 'kill $server_pid 2>/dev/null || true; remove_probes; rm -rf "$out"' EXIT

for bin in "$@"; do
  remove_probes
  perf probe -q -x "$bin" --add 'hookgate_allocations:alloc=_mi_page_malloc_zero'
  perf probe -q -x "$bin" --add 'hookgate_allocations:free=mi_free'
  rm -rf /tmp/hookgate-bench
  HOOKGATE_LOG=warn "$bin" serve -c loadtest/wrk/bench.toml >/dev/null 2>"$out/server.log" &
  server_pid=$!
  waited=0
  until curl -sf -o /dev/null http://127.0.0.1:9090/healthz; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    ((++waited < 100)) || { echo "$bin did not start within 10 s" >&2; exit 1; }
    sleep 0.1
  done
  HOOKGATE_BENCH_LIMIT=2000 wrk -t1 -c8 -d30s -s loadtest/wrk/github.lua \
    http://127.0.0.1:8080/hooks/github >/dev/null
  perf stat -x, --per-thread -e 'hookgate_allocations:alloc,hookgate_allocations:free' \
    -p "$server_pid" -o "$out/counts.csv" &
  stat_pid=$!
  sleep 0.5
  HOOKGATE_BENCH_FIRST=10000 HOOKGATE_BENCH_LIMIT=5000 wrk -t1 -c8 -d30s \
    -s loadtest/wrk/github.lua http://127.0.0.1:8080/hooks/github >/dev/null
  sleep 0.5
  kill -INT "$stat_pid"
  wait "$stat_pid" || true
  served=$(curl -sf http://127.0.0.1:9090/metrics |
    awk '/^hookgate_requests_total\{source="github",code="200"\}/ { print $NF }')
  kill -INT "$server_pid"
  wait "$server_pid" || true
  server_pid=
  measured=$((served - 2000))
  ((measured >= 5000)) || { echo "$bin answered $served requests of 7000" >&2; exit 1; }
  echo "$bin: per request, over $measured requests"
  # "tokio-rt-worker-1234,51843,,hookgate_allocations:alloc,..." by thread name.
  awk -F, -v n="$measured" '$2 ~ /^[0-9]+$/ {
      name = $1; sub(/-[0-9]+$/, "", name)
      kind = ($4 ~ /:alloc/) ? "allocations" : "frees"
      count[name] += 0; if (kind == "allocations") made[name] += $2; else freed[name] += $2 }
    END { for (t in count) if (made[t] + freed[t] > 0)
      printf "  %-16s %6.2f allocations %6.2f frees\n", t, made[t] / n, freed[t] / n }' \
    "$out/counts.csv" | sort
done
