"""A REAL Prometheus (Debian's binary, scripts/testenv/prometheus.sh) scrapes a REAL tiny run — a
`flowdpo worker` and a `flowdpo trainer` process with the SmolLM2 model over a local folder store — every
second, and the Grafana dashboard's queries are run against it through Prometheus' HTTP API exactly as
Grafana sends them (template variables substituted, $__rate_interval = 15s):

- every metric name the dashboard uses has series for the run;
- every panel query returns at least one series with a finite value while the run was live;
- the `namespace` and `run` template variables list the run;
- the Phase panel shows the operator's phase once the operator exports one, the pods' before (the operator's
  metrics endpoint is served here in-process: the operator itself needs an API server, see e2e/).

The scrape config plays the chart's PodMonitor and ServiceMonitor: one target per process, with the
`namespace` target label (the run's for the pods, the operator's own for the operator).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.dashboard_queries import (
    label_values_query,
    load_dashboard,
    metric_names,
    substitute,
    targets,
    variables,
)
from tests.support.paths import ROOT

pytestmark = pytest.mark.slow

NAMESPACE = "flowdpo-test"  # the run's
OPERATOR_NAMESPACE = "flowdpo-system"
RUN = "scrape"
DEADLINE = 240.0  # the run takes ~1 minute on 2 busy CPU cores


def run_document(storage_uri: str) -> dict:
    """A tiny run that exercises every metric, unlike tests/conftest.py's tiny run: baselines on (their
    accuracy gauge), one pair per optimizer step and one pending shard at most, so the trainer publishes
    adapter versions between shards and the worker loads them (adapter load latency, version lag). Chunks
    of 32 tokens let this model finish most 1-digit answers inside the budget (an EOS ends the flow), so
    its rollouts disagree and pairs are mined; data seed 2 mines them in shard 0."""
    return {
        "apiVersion": "flowdpo.dev/v1alpha1",
        "kind": "FlowDPORun",
        "metadata": {"name": RUN},
        "spec": {
            "flow": {"chunkTokens": 32, "maxChunks": 3, "temperature": 1.0},
            "training": {"learningRate": 1.0e-3, "beta": 0.5, "batchSize": 1, "microBatchSize": 4},
            "data": {"numExamples": 6, "shardSize": 2, "seed": 2},
            "rollout": {"batchExamples": 2, "maxPendingShards": 1},
            "baselines": {"untrainedFlow": True, "zeroShot": True},
            "storage": {"uri": storage_uri},
            "seed": 1,
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, params: dict | list | None = None, timeout: float = 10.0) -> dict:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    if shutil.which("apt-get") is None:
        pytest.skip("needs Debian's apt-get to fetch the prometheus binary (scripts/testenv/prometheus.sh)")
    script = ROOT / "scripts" / "testenv" / "prometheus.sh"
    out = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"scripts/testenv/prometheus.sh failed:\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


class Processes:
    """Child processes of one test, each with a log file; all killed (by process group) at the end."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, label: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        with open(self.logs / f"{label}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[label] = proc
        return proc

    def tail(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(self.logs.glob("*.log"))
        )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


class Prometheus:
    """A Prometheus server on a free port with its own config and TSDB in a temp folder; `targets` maps each
    scraped port to its target labels."""

    def __init__(self, binary: str, procs: Processes, folder: Path, targets: dict[int, dict[str, str]]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "flowdpo",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": labels}
                        for port, labels in targets.items()
                    ],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.start(
            "prometheus",
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
        )
        self._procs = procs

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"Prometheus not ready after {timeout}s\n{self._procs.tail()}")

    def api(self, path: str, params: dict | list) -> object:
        body = http_json(f"{self.url}/api/v1/{path}", params)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", {"query": expr})["result"]

    def wait_until(self, what: str, predicate, timeout: float = 60.0):
        """Poll `predicate()` (a query's reading) until it is truthy; fail with the logs otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.25)
        pytest.fail(f"Prometheus never showed {what} in {timeout:.0f}s\n{self._procs.tail()}")

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        data = self.api("query_range", {"query": expr, "start": start, "end": end, "step": "1s"})
        return data["result"]

    def series(self, selector: str, start: float, end: float) -> list[dict]:
        return self.api("series", [("match[]", selector), ("start", start), ("end", end)])


@pytest.fixture
def operator_metrics():
    """The operator's metrics endpoint (flowdpo_operator.metrics.OperatorMetrics, as `flowdpo-operator --metrics-port`
    serves it), driven by the test in the operator's place; returns (metrics, port)."""
    from prometheus_client import start_http_server

    from flowdpo_operator.metrics import OperatorMetrics

    metrics, port = OperatorMetrics(), free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield metrics, port
    server.shutdown()
    server.server_close()
    thread.join(5)


def shown_phases(result: list[dict]) -> list[str]:
    """The phases a stat panel shows for the run now (one per series with a value)."""
    return sorted(s["metric"]["phase"] for s in result if s["metric"].get("run") == RUN)


def test_every_dashboard_query_returns_data_from_a_real_run(
    prometheus_binary, processes, operator_metrics, tmp_path
):
    from flowdpo.run.prepare import ensure_spec, prepare
    from flowdpo.spec import load_document
    from flowdpo.storage import open_store

    operator, operator_port = operator_metrics
    run_file = tmp_path / f"{RUN}.yaml"
    run_file.write_text(yaml.safe_dump(run_document(f"file://{tmp_path}/store")))
    worker_port, trainer_port = free_port(), free_port()
    prom = Prometheus(
        prometheus_binary,
        processes,
        tmp_path,
        {
            worker_port: {"namespace": NAMESPACE, "pod": f"{RUN}-rollout-0"},
            trainer_port: {"namespace": NAMESPACE, "pod": f"{RUN}-trainer-0"},
            operator_port: {"namespace": OPERATOR_NAMESPACE, "pod": "flowdpo-operator-0"},
        },
    )
    t_start = time.time()
    env = {
        **os.environ,
        "FLOWDPO_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cli = [sys.executable, "-m", "flowdpo.cli.main"]
    common = ["--metrics-addr", "127.0.0.1", "--poll-seconds", "0.3"]
    run = {
        label: processes.start(label, [*cli, label, str(run_file), "--metrics-port", str(port), *common], env)
        for label, port in (("worker", worker_port), ("trainer", trainer_port))
    }
    prom.wait_ready()
    dashboard = load_dashboard()
    values = {"datasource": "prometheus", "namespace": NAMESPACE, "run": RUN}
    phase_expr = substitute(next(t.expr for t in targets(dashboard) if t.panel == "Phase"), values)

    # Until the operator exports the run's phase, the Phase panel shows the pods' (both wait for `prepare`).
    prom.wait_until("the pods' phase Pending", lambda: shown_phases(prom.query(phase_expr)) == ["Pending"])
    time.sleep(2.0)  # hold it for two scrapes, so the 1 s steps of the range query below land inside it
    # Then the operator's wins, whatever the pods say (they still say Pending: nothing is prepared yet).
    operator.set_phase(NAMESPACE, RUN, "Preparing")
    prom.wait_until("the operator's Preparing", lambda: shown_phases(prom.query(phase_expr)) == ["Preparing"])
    time.sleep(2.0)

    # The prepare step, in-process.
    doc = load_document(run_file)
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    operator.set_phase(NAMESPACE, RUN, "Training")

    deadline = time.monotonic() + DEADLINE
    for label, proc in run.items():
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{label} did not finish in {DEADLINE:.0f}s\n{processes.tail()}")
        assert proc.returncode == 0, f"{label} exited {proc.returncode}\n{processes.tail()}"
    progress = store.get_json("progress.json")
    assert progress["phase"] == "Succeeded" and progress["examples"] == 6, progress
    assert any(progress["adapterVersions"].values()), (
        f"the run trained nothing, so no adapter was loaded: {progress}"
    )
    operator.set_phase(NAMESPACE, RUN, "Succeeded")
    prom.wait_until("the operator's Succeeded", lambda: shown_phases(prom.query(phase_expr)) == ["Succeeded"])
    time.sleep(2.0)  # two more scrapes: the last 1 s step of the range queries below lies after that sample
    t_end = time.time()

    # The template variables list this run's namespace and name.
    for name in ("namespace", "run"):
        selector, label = label_values_query(variables(dashboard)[name]["definition"])
        found = {s.get(label) for s in prom.series(substitute(selector, values), t_start, t_end)}
        assert values[name] in found, f"variable {name}: {selector} lists {found}"

    # Every metric name the dashboard uses has series for this run.
    used = sorted({m for t in targets(dashboard) for m in metric_names(t.expr)})
    missing = [
        m for m in used if not prom.series(f'{m}{{namespace="{NAMESPACE}", run="{RUN}"}}', t_start, t_end)
    ]
    assert not missing, f"no series scraped for {missing}\n{processes.tail()}"

    # Every panel query returns a series with a finite value at some point of the run.
    empty = []
    for target in targets(dashboard):
        result = prom.query_range(substitute(target.expr, values), t_start, t_end)
        finite = [float(v) for s in result for _, v in s["values"] if math.isfinite(float(v))]
        if not finite:
            empty.append(f"{target} -> {len(result)} series, no finite value")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # The Phase panel showed one phase at a time, in the order the run went through them.
    by_time: dict[float, list[str]] = {}
    for series in prom.query_range(phase_expr, t_start, t_end):
        for at, _ in series["values"]:
            by_time.setdefault(at, []).append(series["metric"]["phase"])
    assert all(len(phases) == 1 for phases in by_time.values()), by_time
    sequence = [phases[0] for _, phases in sorted(by_time.items())]
    assert [p for i, p in enumerate(sequence) if i == 0 or p != sequence[i - 1]] == [
        "Pending", "Preparing", "Training", "Succeeded",
    ]  # fmt: skip

    # Sanity of what the panels show: accuracy is a fraction; the trainer's totals reached the stored ones.
    acc = prom.query_range(f'max(flowdpo_progressive_accuracy{{run="{RUN}"}})', t_start, t_end)
    assert all(0.0 <= float(v) <= 1.0 for _, v in acc[0]["values"])
    scored = prom.query_range(f'max(flowdpo_examples_total{{run="{RUN}"}})', t_start, t_end)
    assert 0 < max(float(v) for _, v in scored[0]["values"]) <= progress["examples"]


def _exporter(registry):
    from prometheus_client import start_http_server

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return port, server, thread


def test_gpu_and_vllm_panels_return_data_for_the_runs_pods_only(prometheus_binary, processes, tmp_path):
    """The GPU (DCGM) and vLLM panels, run by a real Prometheus against exporters with the series names and
    labels of dcgm-exporter and vLLM (served by prometheus_client here: no GPU and no vLLM server run in this
    test; the names are checked against vLLM's own code in tests/packaging/test_dashboard.py). The vLLM pages
    are scraped through the rollout pod's real relay (`flowdpo metrics-proxy`), as the PodMonitor does. Each
    query returns finite values, and only for the pods of the selected run, not for another run's pod."""
    import threading

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from tests.support.dashboard_queries import external_targets

    pods = {"trainer": f"{RUN}-trainer-x7k2p", "rollout": f"{RUN}-rollout-5d9c7f-abcde", "other": "other-rollout-1-a"}
    gpu_labels = ["gpu", "UUID", "modelName", "Hostname"]
    dcgm = {"DCGM_FI_DEV_GPU_UTIL": 87, "DCGM_FI_DEV_FB_USED": 61000, "DCGM_FI_DEV_FB_FREE": 19000,
            "DCGM_FI_DEV_POWER_USAGE": 512.5, "DCGM_FI_DEV_GPU_TEMP": 66, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.42}
    stop, servers, targets_ = threading.Event(), [], {}
    flowdpo = str(Path(sys.executable).parent / "flowdpo")
    for role, pod in pods.items():
        r = CollectorRegistry()
        for name, value in dcgm.items():
            Gauge(name, name, gpu_labels, registry=r).labels("0", f"GPU-{pod}", "NVIDIA H100 80GB HBM3", "n1").set(value)
        servers.append(_exporter(r))
        targets_[servers[-1][0]] = {"namespace": NAMESPACE, "pod": pod}
        if role == "trainer":
            continue
        v = CollectorRegistry()
        labels = ["model_name", "engine"]
        Gauge("vllm:num_requests_running", "running", labels, registry=v).labels("m", "0").set(24)
        Gauge("vllm:num_requests_waiting", "waiting", labels, registry=v).labels("m", "0").set(3)
        Gauge("vllm:kv_cache_usage_perc", "kv", labels, registry=v).labels("m", "0").set(0.73)
        prompt = Counter("vllm:prompt_tokens", "prompt", labels, registry=v).labels("m", "0")
        generated = Counter("vllm:generation_tokens", "generated", labels, registry=v).labels("m", "0")
        ttft = Histogram("vllm:time_to_first_token_seconds", "ttft", labels, registry=v).labels("m", "0")

        def serve(prompt=prompt, generated=generated, ttft=ttft):
            while not stop.wait(0.1):
                prompt.inc(300)
                generated.inc(40)
                ttft.observe(0.08)

        threading.Thread(target=serve, daemon=True).start()
        servers.append(_exporter(v))
        relay = free_port()
        processes.start(f"relay-{role}", [flowdpo, "metrics-proxy", "--upstream",
                                          f"http://127.0.0.1:{servers[-1][0]}/metrics", "--metrics-port", str(relay),
                                          "--metrics-addr", "127.0.0.1"])
        targets_[relay] = {"namespace": NAMESPACE, "pod": pod}
    try:
        prom = Prometheus(prometheus_binary, processes, tmp_path, targets_)
        prom.wait_ready()
        counts = 'count_over_time(vllm:generation_tokens_total[1m])'
        prom.wait_until("20 s of vLLM samples of both rollout pods",
                        lambda: (r := prom.query(counts)) and len(r) == 2 and min(float(s["value"][1]) for s in r) >= 20)
        values = {"namespace": NAMESPACE, "run": RUN}
        queries = external_targets(load_dashboard())
        assert len(queries) >= 10
        for target in queries:
            result = prom.query(substitute(target.expr, values))
            assert result, f"{target}: no series"
            for s in result:
                assert math.isfinite(float(s["value"][1])), f"{target}: {s}"
                assert s["metric"].get("pod", f"{RUN}-").startswith(f"{RUN}-"), f"{target} shows another run: {s}"
            if "rollout|trainer" in target.expr:  # the GPU panels cover both kinds of pods
                assert {s["metric"]["pod"] for s in result} == {pods["trainer"], pods["rollout"]}, target
    finally:
        stop.set()
        for _, server, thread in servers:
            server.shutdown()
            server.server_close()
