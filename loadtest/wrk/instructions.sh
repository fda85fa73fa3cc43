#!/usr/bin/env bash
# Instructions per request of one or more hookgate builds, counted by valgrind's
# callgrind: a figure that does not move with the machine's load, for A/B comparisons of
# work taken out of hookgate's own code (req/s and CPU time on this machine differ by 5%
# between two runs of the same build; see BENCHMARKS.md).
# Each build serves loadtest/wrk/bench.toml on a fresh journal under callgrind twice, for
# a few requests and for many (wrk -c8, every request a new signed body); the difference
# over the difference in requests is what one more request costs, without start-up.
# Printed: all instructions per request, and those outside sha2: valgrind's CPU has no
# SHA extensions, so there SHA-256 runs in software and takes most of the count, where a
# real CPU (sha_ni) spends a small share of it. The ratio is to the first build's.
# Counts user space only: the kernel's work (sockets, fdatasync) is not in them, and
# under valgrind each committer group holds about one event, so the per-group work
# weighs more than under load.
# Needs valgrind (Debian package `valgrind`), wrk and a release build.
# Usage: loadtest/wrk/instructions.sh BINARY [BINARY...]
set -Eeuo pipefail
# A command that fails ends the script (set -e); say which, rather than stop silently.
trap 'echo "$0: stopped: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
cd "$(dirname "$0")/../.."
(($# > 0)) || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
few=${FEW:-1000}
many=${MANY:-5000}
export HOOKGATE_BENCH_SIGS=${SIGS:-/tmp/hookgate-sigs.txt}
[[ -s $HOOKGATE_BENCH_SIGS ]] || python3 loadtest/wrk/sign.py 1000000 "$HOOKGATE_BENCH_SIGS"
out=$(mktemp -d /tmp/hookgate-instructions.XXXXXX)
server_pid=
trap 'kill $server_pid 2>/dev/null || true; rm -rf "$out"' EXIT

# count BINARY REQUESTS: prints "all sha2" instructions of a run serving REQUESTS.
count() {
  rm -rf /tmp/hookgate-bench "$out"/cg.*
  HOOKGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
    "$1" serve -c loadtest/wrk/bench.toml >/dev/null 2>"$out/valgrind.log" &
  server_pid=$!
  local waited=0
  until curl -sf -o /dev/null http://127.0.0.1:9090/healthz; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/valgrind.log" >&2; exit 1; }
    ((++waited < 240)) || { echo "$1 did not start within 120 s" >&2; exit 1; }
    sleep 0.5
  done
  # github.lua stops after HOOKGATE_BENCH_LIMIT answers; the duration only bounds it.
  HOOKGATE_BENCH_LIMIT=$2 wrk -t1 -c8 -d"${SECONDS_EACH:-30}s" -s loadtest/wrk/github.lua \
    http://127.0.0.1:8080/hooks/github >/dev/null
  local served
  served=$(curl -sf http://127.0.0.1:9090/metrics |
    awk '/^hookgate_requests_total\{source="github",code="200"\}/ { print $NF }')
  kill -INT "$server_pid"
  wait "$server_pid" || true
  server_pid=
  ((served >= $2)) || { echo "$1 answered $served of $2 requests" >&2; exit 1; }
  callgrind_annotate --auto=no --threshold=100 "$out"/cg.* |
    awk -v n="$served" '/PROGRAM TOTALS/ { gsub(",", "", $1); all = $1 }
      /sha2::/ { gsub(",", "", $1); sha += $1 } END { print all, sha, n }'
}

printf '%-40s %14s %14s %8s\n' build "instr/request" "without sha2" ratio
first=
for bin in "$@"; do
  read -r all1 sha1 n1 <<<"$(count "$bin" "$few")"
  read -r all2 sha2 n2 <<<"$(count "$bin" "$many")"
  per=$(((all2 - all1) / (n2 - n1)))
  rest=$(((all2 - sha2 - all1 + sha1) / (n2 - n1)))
  first=${first:-$rest}
  printf '%-40s %14d %14d %7.3fx\n' "$bin" "$per" "$rest" "$(awk -v a="$rest" -v b="$first" 'BEGIN { print a / b }')"
done
