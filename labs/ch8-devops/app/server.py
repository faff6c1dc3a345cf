#!/usr/bin/env python3
"""8.3.1 项目开发 — the project: a tiny web application that tells its version.

GET /         an HTML page: "ch8-web version X.Y.Z", the environment, the host
GET /version  {"app": "ch8-web", "version": "X.Y.Z", "environment": "..."}
GET /health   ok

The version comes from the VERSION file next to this script (baked into the image);
the environment (dev, test, prod) from APP_ENV, set by `docker run -e`.
Python's standard library only (Debian's python3 package).
"""
import html
import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

APP = "ch8-web"
VERSION = (Path(__file__).with_name("VERSION").read_text(encoding="utf-8").strip() or "unknown")
ENVIRONMENT = os.environ.get("APP_ENV", "dev")
PORT = int(os.environ.get("PORT", "8000"))


class Handler(BaseHTTPRequestHandler):
    server_version = f"{APP}/{VERSION}"

    def _send(self, status: int, ctype: str, body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        if self.path == "/health":
            self._send(200, "text/plain; charset=utf-8", "ok\n")
        elif self.path == "/version":
            doc = {"app": APP, "version": VERSION, "environment": ENVIRONMENT}
            self._send(200, "application/json", json.dumps(doc) + "\n")
        elif self.path == "/":
            host = html.escape(socket.gethostname())
            env = html.escape(ENVIRONMENT)
            self._send(
                200,
                "text/html; charset=utf-8",
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ch8-web</title></head>\n"
                f"<body><h1>{APP} version {html.escape(VERSION)}</h1>\n"
                f"<p>environment: {env} &middot; container: {host}</p>\n"
                "<p>阿里云Docker开发实践: dev &rarr; registry &rarr; test &rarr; prod</p></body></html>\n",
            )
        else:
            self._send(404, "text/plain; charset=utf-8", "not found\n")

    def log_message(self, fmt: str, *args) -> None:  # to stdout: `docker logs`
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    print(f"{APP} {VERSION} ({ENVIRONMENT}) listening on :{PORT}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
