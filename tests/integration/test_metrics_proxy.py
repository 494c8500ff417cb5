"""`flowdpo metrics-proxy`, the relay of a rollout pod's vLLM /metrics (flowdpo/metrics_proxy.py), as a real
process in front of a real HTTP metrics server (prometheus_client's, serving vLLM-named series: the vLLM server
itself is exercised in tests/integration/test_vllm_backend.py). It relays exactly the upstream page, refuses
every other path and method (vLLM's LoRA admin endpoints must stay pod-local), and says why when the upstream
is down."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server

FLOWDPO = str(Path(sys.executable).parent / "flowdpo")  # the console script of this environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, method: str = "GET", accept: str | None = None) -> tuple[int, bytes]:
    headers = {"Accept": accept} if accept else {}
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def upstream():
    registry = CollectorRegistry()
    g = Gauge("vllm:num_requests_running", "Requests on the GPU", ["model_name"], registry=registry)
    g.labels("answer-v3").set(7)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port, registry
    server.shutdown()


def start_proxy(upstream_url: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [FLOWDPO, "metrics-proxy", "--upstream", upstream_url, "--metrics-port", str(port),
         "--metrics-addr", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"metrics-proxy exited: {proc.stdout.read().decode()}") from None
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("metrics-proxy did not listen within 60 s")


def test_relays_the_upstream_page_and_nothing_else(upstream):
    port, registry = upstream
    proc, proxy = start_proxy(f"http://127.0.0.1:{port}/metrics")
    try:
        status, body = fetch(f"http://127.0.0.1:{proxy}/metrics")
        assert status == 200
        assert body == generate_latest(registry)
        assert b'vllm:num_requests_running{model_name="answer-v3"} 7.0' in body
        # Asked for OpenMetrics (as Prometheus does), prometheus_client would write vllm_num_requests_running;
        # through the relay the names stay vLLM's own.
        openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        direct = fetch(f"http://127.0.0.1:{port}/metrics", accept=openmetrics)[1]
        assert b"vllm_num_requests_running{" in direct
        assert fetch(f"http://127.0.0.1:{proxy}/metrics", accept=openmetrics) == (200, generate_latest(registry))
        for path in ("/v1/load_lora_adapter", "/v1/models", "/metrics/../v1/models", "/"):
            status, body = fetch(f"http://127.0.0.1:{proxy}{path}")
            assert status == 404 and b"only GET /metrics" in body, path
        status, body = fetch(f"http://127.0.0.1:{proxy}/v1/load_lora_adapter", method="POST")
        assert status == 405 and b"read-only" in body
        assert fetch(f"http://127.0.0.1:{proxy}/metrics", method="HEAD") == (200, b"")
    finally:
        proc.kill()
        proc.wait()


def test_an_unreachable_upstream_is_a_502_naming_it():
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    proc, proxy = start_proxy(dead)
    try:
        status, body = fetch(f"http://127.0.0.1:{proxy}/metrics")
        assert status == 502 and dead.encode() in body and b"not reachable" in body
    finally:
        proc.kill()
        proc.wait()


def test_a_bad_upstream_is_refused_at_start():
    out = subprocess.run(
        [FLOWDPO, "metrics-proxy", "--upstream", "127.0.0.1:8000", "--metrics-port", "9400"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 2 and "--upstream: '127.0.0.1:8000' is not an http(s) URL" in out.stderr
