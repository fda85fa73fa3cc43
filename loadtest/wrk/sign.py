#!/usr/bin/env python3
"""Signatures for github.lua's numbered bodies: line i (from 0) is the hex HMAC-SHA256,
under the bench secret, of github.lua's body with its padding's first eight characters
replaced by i as eight digits. With HOOKGATE_BENCH_SIGS naming this file, github.lua
sends body i with signature i, so that every request is a new signed body: hookgate's
replay defence takes a known body under a new id for a duplicate (README, "Replay
defence"), and one body for every request would measure duplicates, not journaling.

Usage: loadtest/wrk/sign.py COUNT FILE
"""
import hashlib
import hmac
import pathlib
import re
import sys

SECRET = b"bench-github-secret"
MARK = '"padding":"'


def main():
    count, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    lua = (pathlib.Path(__file__).parent / "github.lua").read_text()
    body = re.search(r"\[==\[(.*?)\]==\]", lua, re.S).group(1)
    head, tail = body.split(MARK, 1)
    head, tail = (head + MARK).encode(), tail[8:].encode()
    with out.open("w") as f:
        for i in range(count):
            numbered = b"%s%08d%s" % (head, i, tail)
            f.write(hmac.new(SECRET, numbered, hashlib.sha256).hexdigest() + "\n")


if __name__ == "__main__":
    main()
