"""A read-only relay of one upstream `/metrics` page: `flowdpo metrics-proxy`.

A rollout pod's vLLM server listens on 127.0.0.1 only, because its runtime LoRA endpoints are an admin API
(load, replace, unload adapters) that only the worker next to it may call. Prometheus still wants vLLM's own
metrics (queue lengths, KV-cache use, time to first token, tokens/s): this relay, a container of the same pod,
listens on the pod IP and answers `GET /metrics` (and `HEAD`) with the upstream's page, and nothing else, so
no other vLLM endpoint becomes reachable from outside the pod.

It asks the upstream for the Prometheus text format (0.0.4), whatever the scraper asked for: that format keeps
vLLM's metric names (`vllm:num_requests_running`) as they are, while prometheus_client's OpenMetrics output
(0.26, which Prometheus prefers) escapes the ':' to '_' (`vllm_num_requests_running`), and the dashboard's
vLLM panels would find nothing (tests/integration/test_prometheus_scrape.py scrapes through this relay).
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

PATH = "/metrics"
TEXT_FORMAT = "text/plain; version=0.0.4"


def make_handler(upstream: str, timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "flowdpo-metrics-proxy"

        def _relay(self, body: bool) -> None:
            if self.path.split("?", 1)[0] != PATH:
                self._plain(404, f"only GET {PATH} is served here\n", body)
                return
            try:
                request = urllib.request.Request(upstream, headers={"Accept": TEXT_FORMAT})
                with urllib.request.urlopen(request, timeout=timeout) as r:
                    data, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "text/plain")
            except urllib.error.HTTPError as e:
                self._plain(502, f"upstream {upstream} answered HTTP {e.code}\n", body)
                return
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                self._plain(502, f"upstream {upstream} is not reachable: {reason}\n", body)
                return
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _plain(self, status: int, text: str, body: bool) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if status == 405:
                self.send_header("Allow", "GET, HEAD")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._relay(body=True)

        def do_HEAD(self) -> None:
            self._relay(body=False)

        def _refuse(self) -> None:
            self._plain(405, f"read-only: only GET {PATH}\n", True)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

        def log_message(self, format: str, *args) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


def serve(upstream: str, port: int, addr: str = "0.0.0.0", timeout: float = 5.0) -> ThreadingHTTPServer:
    """Start the relay (not yet serving: call `serve_forever`). Port 0 picks a free port (`server_port`)."""
    if not upstream.startswith(("http://", "https://")):
        raise ValueError(f"--upstream: {upstream!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/metrics")
    server = ThreadingHTTPServer((addr, port), make_handler(upstream, timeout))
    server.daemon_threads = True
    return server
