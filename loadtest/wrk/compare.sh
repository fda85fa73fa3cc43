#!/usr/bin/env bash
# hookgate and the servers its speed is measured against, one at a time under the same
# wrk load, in one run:
#   bare      hookgate-loadtest baseline: reads the body, answers 200 (the HTTP ceiling)
#   hmac      hookgate-loadtest hmac: also checks GitHub's signature (the CPU ceiling)
#   floor     hookgate-loadtest floor: also appends each group of waiting bodies to one
#             file and fdatasyncs once per group before answering (the floor for durable
#             acknowledgements)
#   hookgate  target/release/hookgate with loadtest/wrk/bench.toml, on a fresh journal
# For each: requests/s, p99, p99.9 (from github.lua's done hook) and the server process's
# CPU time per request (utime + stime from /proc/PID/stat across the wrk run, over the
# requests wrk counted; and that time's user and system parts, where a server's own code
# runs and where the kernel works for it), its rate over bare's, and hookgate/floor and
# hookgate/hmac;
# for hookgate and the floor, that CPU time by thread too, by the kernel's 15-character
# names (tokio-rt-worker is the request path, journal-committ the committer: the log and
# its syncs, journal-indexer, journal-index (its background flush) and fjall's flusher and
# compactor the index (sled-io in builds before 2026-12-04, when sled held the index);
# the floor's floor-writer is its whole log: the write and the sync).
# Every request is a new signed body (loadtest/wrk/sign.py writes the signatures, a
# million by default, to $SIGS or /tmp/hookgate-sigs.txt once), so that hookgate journals
# each one; after its run the script prints how many it accepted and how many it took
# for duplicates, its syncs' average time and how many committer groups took long
# (from /metrics, counting the warm-up too).
# Needs wrk (Debian package `wrk`) and a release build: cargo build --release --workspace
# Usage: loadtest/wrk/compare.sh [SECONDS] [CONNECTIONS]
# ROUNDS=N runs the servers N times in turn (bare, hmac, floor, hookgate, bare, ...) and
# then prints the median of each figure, and of each ratio, over the rounds (default 1).
# BEFORE=/path/to/an/older/hookgate also runs that build, on a fresh journal of its own
# (before hookgate in odd rounds, after it in even ones). Where a build runs in the round
# has decided which did better in every round of some runs (second in one run, first in
# another: BENCHMARKS.md, 2026-12-07), so compare two builds over an even number of rounds,
# where each goes first as often: with an odd number, hookgate goes second once more, and
# the script says so.
# CONFIG=FILE runs hookgate (and BEFORE) with FILE instead of loadtest/wrk/bench.toml;
# loadtest/wrk/steady.toml is a journal in its steady state (short retention, small
# segments: compaction removes what comes in and the log writes over retired segments).
# WARMUP=SECONDS loads hookgate (and BEFORE) that long, unmeasured, before its run (with
# other bodies, so that the measured run's are still new).
# THREADS=N runs every server with N request threads (TOKIO_WORKER_THREADS, which tokio's
# default runtime reads, and hookgate too where its config leaves server.threads out, as
# bench.toml does). Unset, each server has its default: one per CPU.
# WEBHOOK=1 also runs adnanh/webhook (Debian package `webhook`) with one HMAC rule and
# /bin/true as its command (loadtest/wrk/webhook.json).
set -Eeuo pipefail
# A command that fails ends the script (set -e); say which, rather than stop silently.
trap 'echo "$0: stopped: line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-64}
rounds=${ROUNDS:-1}
bin=target/release
clk_tck=$(getconf CLK_TCK)
export HOOKGATE_BENCH_SIGS=${SIGS:-/tmp/hookgate-sigs.txt}
[[ -s $HOOKGATE_BENCH_SIGS ]] || python3 loadtest/wrk/sign.py 1000000 "$HOOKGATE_BENCH_SIGS"
# The floor's file sits beside the journal (/tmp/hookgate-bench), on the same filesystem.
floor_dir=$(mktemp -d /tmp/hookgate-floor.XXXXXX)
# One line per server and round: round, server, req/s, p99 ms, p99.9 ms, CPU µs/request,
# and its user and system parts.
results=$(mktemp /tmp/hookgate-compare.XXXXXX)
server_pid=
[[ -z ${THREADS:-} ]] || export TOKIO_WORKER_THREADS=$THREADS
trap 'kill $server_pid 2>/dev/null || true; rm -rf "$floor_dir" "$results"' EXIT

# The servers; each execs, so that $! is the server's own pid.
bare() { exec "$bin/hookgate-loadtest" baseline --listen 127.0.0.1:8081; }
hmac() { exec "$bin/hookgate-loadtest" hmac --listen 127.0.0.1:8083; }
floor() { exec "$bin/hookgate-loadtest" floor --listen 127.0.0.1:8084 --dir "$floor_dir"; }
gate() {
  rm -rf /tmp/hookgate-bench
  HOOKGATE_LOG=${HOOKGATE_LOG:-warn} exec "$1" serve -c "${CONFIG:-loadtest/wrk/bench.toml}" 2>/tmp/hookgate-bench.log
}
webhook_rule() { exec webhook -hooks loadtest/wrk/webhook.json -ip 127.0.0.1 -port 8082 -nopanic; }

# hookgate is ready when /healthz says so; the others once they take connections.
ready() { # name port
  case $1 in
    hookgate | before) curl -sf -o /dev/null http://127.0.0.1:9090/healthz ;;
    *) (: <"/dev/tcp/127.0.0.1/$2") 2>/dev/null ;;
  esac
}
# utime and stime (fields 14 and 15; the name in field 2 may hold spaces, so count from
# its closing parenthesis, after which field 3 comes first).
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }
# Each thread of $1 as "tid name ticks", the name without a trailing number (sled-io-3
# is sled-io); a thread that ends while they are read is left out, not a failure (under
# set -e its awk failing, last in the loop, ended the whole script without a word).
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    awk -v tid="${t##*/}" '{ n = $0; sub(/^[^(]*\(/, "", n); sub(/\) [^)]*$/, "", n)
      gsub(/ /, "_", n); sub(/-[0-9]+$/, "", n); sub(/.*\) /, ""); print tid, n, $12 + $13 }' "$t/stat" 2>/dev/null || true
  done
}
# CPU µs per request by thread name between two thread_ticks lists; what threads that
# ended in between used is counted in the process's total only.
by_thread() { # before-list after-list requests
  awk -v hz="$clk_tck" -v n="$3" 'FNR == NR { was[$1] = $3; next }
    { used[$2] += $3 - was[$1] }
    END { for (k in used) if (used[k] > 0) printf "%s %.1f\n", k, used[k] * 1e6 / hz / n }' \
    <(echo "$1") <(echo "$2") | sort -k2 -gr | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }'
}
# wrk's latencies ("850.00us", "1.23ms", "1.02s") in ms.
in_ms() { awk '{ v = $1; if (v ~ /us$/) v /= 1000; else if (v ~ /ms$/) v += 0; else if (v ~ /s$/) v *= 1000; printf "%.2f\n", v }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# measure ROUND NAME PORT SERVER [ARG]: starts the server, loads it, stops it; prints and
# records its figures.
measure() {
  local round=$1 name=$2 port=$3
  shift 3
  "$@" >/dev/null 2>&1 &
  server_pid=$!
  local waited=0
  until ready "$name" "$port"; do
    kill -0 "$server_pid" 2>/dev/null || { echo "$name exited while starting" >&2; exit 1; }
    ((++waited < 400)) || { echo "$name did not start within 20 s" >&2; exit 1; }
    sleep 0.05
  done
  local before after out first=0
  case $name in
    hookgate | before)
      if ((${WARMUP:-0} > 0)); then
        wrk -t1 -c"$conns" -d"${WARMUP}s" -s loadtest/wrk/github.lua "http://127.0.0.1:$port/hooks/github" >/dev/null
        first=500000
      fi
      ;;
  esac
  local threads_before threads_after
  before=$(cpu_ticks "$server_pid")
  threads_before=$(thread_ticks "$server_pid")
  out=$(HOOKGATE_BENCH_FIRST=$first wrk -t1 -c"$conns" -d"${secs}s" --latency -s loadtest/wrk/github.lua "http://127.0.0.1:$port/hooks/github")
  after=$(cpu_ticks "$server_pid")
  threads_after=$(thread_ticks "$server_pid")
  local journaled=
  case $name in
    hookgate | before) journaled=$(curl -sf http://127.0.0.1:9090/metrics |
      awk -F'[ ,"=}]+' '/^hookgate_events_total/ { n[$4] += $NF }
        /^hookgate_journal_sync_seconds_sum/ { sum = $NF } /^hookgate_journal_sync_seconds_count/ { count = $NF }
        /^hookgate_journal_group_seconds_bucket\{le="0.0064"\}/ { quick = $NF }
        /^hookgate_journal_group_seconds_bucket\{le="0.0256"\}/ { slow = $NF } /^hookgate_journal_group_seconds_count/ { groups = $NF }
        END { printf "journaled: accepted %d, duplicate %d; %d syncs, %.3f ms each on average; of %d committer groups, %d took over 6.4 ms, %d over 25.6 ms", n["accepted"], n["duplicate"], count, count ? sum * 1000 / count : 0, groups, groups - quick, groups - slow }') ;;
  esac
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  local rps requests p99 p999 cpu user system
  rps=$(awk '/Requests\/sec/{ print $2 }' <<<"$out")
  requests=$(awk '/requests in/{ print $1 }' <<<"$out")
  p99=$(awk '/ 99%/{ print $2 }' <<<"$out" | in_ms)
  p999=$(awk '/^Latency p99.9:/{ print $3 }' <<<"$out" | in_ms)
  # µs per request: user, system, and their sum.
  read -r user system cpu < <(awk -v b="$before" -v a="$after" -v hz="$clk_tck" -v n="$requests" \
    'BEGIN { split(b, x, " "); split(a, y, " "); u = (y[1] - x[1]) * 1e6 / hz / n; s = (y[2] - x[2]) * 1e6 / hz / n
      printf "%.1f %.1f %.1f\n", u, s, u + s }')
  echo "$round $name $rps $p99 $p999 $cpu $user $system" >>"$results"
  row "$name" "$rps" "$p99" "$p999" "$cpu" "$user" "$system" "$(awk -v r="$round" '$1 == r && $2 == "bare" { print $3 }' "$results")"
  grep -E 'Non-2xx|Socket errors' <<<"$out" | sed 's/^/          /' || true
  [[ -z $journaled ]] || echo "          $journaled"
  case $name in
    hookgate | before | floor) echo "          CPU µs/req by thread: $(by_thread "$threads_before" "$threads_after" "$requests")" ;;
  esac
}
header() { printf '%-9s %10s %8s %9s %12s %11s %8s\n' server req/s 'p99 ms' 'p99.9 ms' 'CPU µs/req' 'user+sys' 'x bare'; }
row() { # name, req/s, p99, p99.9, CPU, user, system, bare's req/s
  printf '%-9s %10.0f %8.2f %9.2f %12.1f %5.1f+%-5.1f %7.2fx\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" \
    "$(awk -v a="$2" -v b="$8" 'BEGIN { print a / b }')"
}
# The median over rounds of hookgate's figure in column $3 over server $1's (or $2's).
ratio() { # a, b, column
  awk -v a="$1" -v b="$2" -v c="$3" '$2 == a { x[$1] = $c } $2 == b { y[$1] = $c }
    END { for (r in x) if (r in y) print x[r] / y[r] }' "$results" | median
}

servers=(bare hmac floor)
[[ -n "${BEFORE:-}" ]] && servers+=(before)
if [[ -n "${BEFORE:-}" ]] && ((rounds % 2)); then
  echo "note: $rounds rounds: hookgate runs second of the two builds in $(((rounds + 1) / 2)) of them, BEFORE in $((rounds / 2)); the place has decided runs before, so use an even ROUNDS to compare them" >&2
fi
servers+=(hookgate)
[[ -n "${WEBHOOK:-}" ]] && servers+=(webhook)
echo "wrk -t1 -c$conns -d${secs}s -s loadtest/wrk/github.lua; CPU is the server process's user+system time per request; request threads: ${THREADS:-one per CPU (the default)}"
for ((round = 1; round <= rounds; round++)); do
  ((rounds == 1)) || echo "round $round of $rounds"
  header
  for name in "${servers[@]}"; do
    # With BEFORE, the two builds take turns at going first, so that neither always runs
    # just after the same server (each start deletes the last one's files, whose freeing
    # the disk may still be busy with).
    if [[ -n "${BEFORE:-}" ]] && ((round % 2 == 0)); then
      case $name in
        before) name=hookgate ;;
        hookgate) name=before ;;
      esac
    fi
    case $name in
      bare) measure "$round" bare 8081 bare ;;
      hmac) measure "$round" hmac 8083 hmac ;;
      floor)
        measure "$round" floor 8084 floor
        rm -f "$floor_dir/floor.log"
        ;;
      before) measure "$round" before 8080 gate "$BEFORE" ;;
      hookgate) measure "$round" hookgate 8080 gate "$bin/hookgate" ;;
      webhook) measure "$round" webhook 8082 webhook_rule ;;
    esac
  done
done
if ((rounds > 1)); then
  echo "median of $rounds rounds (x bare: the median of each round's ratio)"
  header
  for name in "${servers[@]}"; do
    figures=()
    for column in 3 4 5 6 7 8; do
      figures+=("$(awk -v s="$name" -v c="$column" '$2 == s { print $c }' "$results" | median)")
    done
    printf '%-9s %10.0f %8.2f %9.2f %12.1f %5.1f+%-5.1f %7.2fx\n' "$name" "${figures[@]}" "$(ratio "$name" bare 3)"
  done
fi
for base in floor hmac; do
  printf 'hookgate/%-5s %5.2fx req/s, %5.2fx CPU per request (user %.2fx, system %.2fx)\n' "$base" \
    "$(ratio hookgate "$base" 3)" "$(ratio hookgate "$base" 6)" "$(ratio hookgate "$base" 7)" "$(ratio hookgate "$base" 8)"
done
