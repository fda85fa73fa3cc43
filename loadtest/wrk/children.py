#!/usr/bin/env python3
"""Where one function's time goes, from a `perf script` of call stacks: for each sample
of the thread named COMM whose stack holds FUNCTION (its outermost frame of that name),
the frame it called, summed. Printed as shares of all of COMM's samples, so that a share
times the thread's CPU per request (compare.sh prints it) is microseconds per request.

    perf record -F 1999 -g --call-graph dwarf,16384 -p PID -o perf.data -- sleep 8
    perf script -i perf.data --comm tokio-rt-worker -F comm,ip,sym > stacks.txt
    loadtest/wrk/children.py stacks.txt 'hookgate::gateway::Gateway::ingest::{{closure}}'

Inlined frames count as frames (perf script shows them unless --no-inline), so an
inlined helper shows up as its own line. Generic arguments are shortened to `<>`.
"""
import collections
import re
import sys


def frames(sample):
    """A sample's symbols, innermost first."""
    lines = sample.strip().split("\n")[1:]
    return [parts[1] if len(parts) > 1 else "" for parts in (l.split(None, 1) for l in lines)]


def short(symbol):
    while True:
        shorter = re.sub(r"<[^<>]*>", "<>", symbol)
        if shorter == symbol:
            return symbol[:120]
        symbol = shorter


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, function = sys.argv[1], sys.argv[2]
    samples = [s for s in open(path).read().split("\n\n") if s.strip()]
    under = collections.Counter()
    inside = 0
    for sample in samples:
        stack = frames(sample)
        at = [i for i, symbol in enumerate(stack) if function in symbol]
        if not at:
            continue
        inside += 1
        outermost = at[-1]
        under["(self)" if outermost == 0 else short(stack[outermost - 1])] += 1
    total = len(samples)
    if total == 0:
        sys.exit(f"{path} holds no samples")
    print(f"{total} samples; under {function}: {inside} ({100 * inside / total:.1f}%)")
    for name, count in under.most_common(40):
        print(f"{100 * count / total:6.2f}%  {name}")


if __name__ == "__main__":
    main()
