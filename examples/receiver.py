#!/usr/bin/env python3
"""A subscription's endpoint, standard library only: it checks hookgate's Standard
Webhooks signature (any of the space-separated `v1,` signatures may match: during a
secret rotation there are two) and the timestamp, then answers 204.

    HOOKGATE_SECRET=whsec_... python3 examples/receiver.py [PORT] [STATUS...]

STATUS... answers the first requests with those codes (e.g. `500 500`) and then 204, to
watch hookgate retry. A callback subscription's task is done by POSTing to the URL in
`hookgate-callback-url`, e.g. with curl.
"""
import base64, hashlib, hmac, http.server, json, os, sys, time

KEY = base64.b64decode(os.environ["HOOKGATE_SECRET"].removeprefix("whsec_"))
PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
SCRIPT = [int(s) for s in sys.argv[2:]]
seen = set()  # in production: a table keyed by webhook-id (deliveries are at least once)


def verified(headers, body):
    stamp = headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > 300:
        return False
    signed = f'{headers["webhook-id"]}.{stamp}.'.encode() + body
    expected = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(sig.partition(",")[2], expected)
        for sig in headers["webhook-signature"].split()
    )


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if not verified(self.headers, body):
            self.send_response(401)
            self.end_headers()
            print("refused: bad signature", flush=True)
            return
        status = SCRIPT.pop(0) if SCRIPT else 204
        first = self.headers["webhook-id"] not in seen
        seen.add(self.headers["webhook-id"])
        # `events tail --forward-to` sends no delivery id (there is no delivery): its seq.
        about = self.headers.get("hookgate-delivery") or f'seq {self.headers["hookgate-seq"]}'
        print(status, about, self.headers.get("hookgate-event-type"),
              "new" if first else "again", json.loads(body), flush=True)
        if cb := self.headers.get("hookgate-callback-url"):
            print("  callback:", cb, flush=True)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", PORT), Receiver).serve_forever()
