"""A tiny HTTP handler for the rebound demo (python:3.12-alpine, standard library only).

POST /  ->  400 if the body is empty (a permanent failure: straight to the DLQ),
            503 for about 20% of requests (transient: goes through the delay tiers),
            200 otherwise.
GET /healthz -> 200, for the compose healthcheck.

FAIL_RATE (0..1, default 0.2) and PORT (default 8080) can be set in the environment.
"""

import os
import random
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAIL_RATE = float(os.environ.get("FAIL_RATE", "0.2"))
PORT = int(os.environ.get("PORT", "8080"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(200, "ok")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length > 0 else b""
        if not payload.strip():
            self.reply(400, "empty body")
        elif random.random() < FAIL_RATE:
            self.reply(503, "try again later")
        else:
            self.reply(200, "processed %d bytes" % len(payload))

    def log_message(self, fmt, *args):
        pass  # quiet: rebound's metrics tell the story


if __name__ == "__main__":
    print("demo-handler listening on :%d (fail rate %.2f)" % (PORT, FAIL_RATE), flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
