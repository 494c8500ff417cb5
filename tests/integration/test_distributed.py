"""The distributed data plane as separate OS processes against a REAL S3 endpoint (moto's server on
127.0.0.1) with the REAL SmolLM2 model: `flowdpo prepare`, two `flowdpo worker`s and one `flowdpo trainer`.

Each test ends by checking the objects in S3 (never the logs): every example scored exactly once, every
mined pair trained exactly once (mined == trained per adapter, no duplicate pair ids), the trainer's
checkpoints in order with adapter versions only going up — after a clean run, a SIGKILLed and restarted
trainer, a worker SIGKILLed mid-shard (its lease expires and the other worker takes the shard over), and
an S3 endpoint that refuses connections for 5 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flowdpo.names import ADAPTERS
from flowdpo.storage import RunLayout, open_store
from flowdpo.train.online import read_pairs
from tests.support.s3util import BUCKET, free_port

pytestmark = pytest.mark.slow

RUN = """
apiVersion: flowdpo.dev/v1alpha1
kind: FlowDPORun
metadata: {{name: {name}}}
spec:
  flow: {{chunkTokens: 16, maxChunks: 3, temperature: 1.0}}
  training: {{learningRate: 1.0e-3, beta: 0.5, batchSize: 1, microBatchSize: 4}}
  data: {{numExamples: {n}, shardSize: 2, seed: 2}}
  rollout: {{batchExamples: 2, maxPendingShards: 2}}
  storage: {{uri: "s3://{bucket}/runs/{name}"}}
  seed: 1
"""
# Data seed 2: on this machine shard 0 (always rolled out by the untrained flow) mines pairs, so the trainer
# publishes versions before shard 3 opens (see the staleness check below).
TIMEOUT = 240


class Cluster:
    """One run's processes, their logs, and the run's store as seen from the test."""

    def __init__(self, s3, tmp_path: Path, name: str, n: int = 6, lease: float = 30.0):
        self.s3, self.tmp, self.name, self.lease = s3, tmp_path, name, lease
        self.file = tmp_path / f"{name}.yaml"
        self.file.write_text(RUN.format(name=name, n=n, bucket=BUCKET))
        self.env = {
            **os.environ, **s3.env,
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.store = open_store(f"s3://{BUCKET}/runs/{name}")

    def start(self, label: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{label}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowdpo.cli.main", *args, str(self.file)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.procs[label] = proc
        return proc

    def prepare(self) -> None:
        assert self.start("prepare", "prepare").wait(120) == 0, self.logs()

    def worker(self, wid: str, *extra: str) -> subprocess.Popen:
        return self.start(wid, "worker", "--worker-id", wid, "--lease-seconds", str(self.lease), "--poll-seconds", "0.3", *extra)

    def trainer(self, *extra: str) -> subprocess.Popen:
        return self.start("trainer", "trainer", "--poll-seconds", "0.3", *extra)

    def kill(self, label: str) -> None:
        os.killpg(self.procs[label].pid, signal.SIGKILL)
        self.procs[label].wait()

    def wait_all(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for label, proc in self.procs.items():
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stop_all()
                pytest.fail(f"{label} did not finish in {timeout}s\n{self.logs()}")
            assert proc.returncode == 0, f"{label} exited {proc.returncode}\n{self.logs()}"

    def wait_for(self, what: str, predicate, timeout: float = TIMEOUT, step: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            dead = [k for k, p in self.procs.items() if p.poll() not in (None, 0)]
            assert not dead, f"{dead} died while waiting for {what}\n{self.logs()}"
            time.sleep(step)
        self.stop_all()
        pytest.fail(f"timed out waiting for {what}\n{self.logs()}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def logs(self, tail: int = 2500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(self.tmp.glob("*.log")))

    def held_shard(self, after_one_done: bool = False) -> dict | None:
        """The claim of a shard some worker holds without its results yet (None if there is none, or with
        `after_one_done` while no shard has results yet)."""
        done = {RunLayout.shard_index(k) for k in self.store.list(RunLayout.results_root)}
        if after_one_done and not done:
            return None
        for key in self.store.list(RunLayout.claims_root):
            parsed = RunLayout.parse_claim(key)
            if parsed and parsed[1] == "attempt" and parsed[0] not in done:
                return self.store.get_json(key)
        return None

    def consumed(self) -> int:
        pointer = self.store.get_json_or(RunLayout.trainer_latest)
        return RunLayout.consumed_of_state(pointer["key"]) if pointer else 0


@pytest.fixture
def cluster(s3_env, tmp_path, request):
    made: list[Cluster] = []

    def make(**kw) -> Cluster:
        c = Cluster(s3_env, tmp_path, request.node.name.split("[")[0].replace("_", "-")[:40].strip("-"), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_all()


def check_run(store) -> dict:
    """Everything a finished run must satisfy, read from the objects in storage."""
    manifest = store.get_json(RunLayout.manifest)
    shards = manifest["shards"]
    prepared = [e["id"] for s in range(shards) for e in store.get_jsonl(RunLayout.examples(s))]
    results = {s: store.get_jsonl(RunLayout.results(s)) for s in range(shards)}
    scored = [r["exampleId"] for s in range(shards) for r in results[s]]
    assert sorted(scored) == sorted(prepared) and len(set(scored)) == len(scored) == manifest["examples"]
    pairs = [p for s in range(shards) for p in read_pairs(store, s, results[s])]
    pair_ids = [p["pairId"] for p in pairs]
    assert len(set(pair_ids)) == len(pair_ids), "duplicate pair ids"

    state = store.get_json(store.get_json(RunLayout.trainer_latest)["key"])
    assert state["finished"] and state["consumed"] == list(range(shards))
    assert state["pending"] == {a: [] for a in ADAPTERS}
    progress = store.get_json(RunLayout.progress)
    assert progress["phase"] == "Succeeded" and progress["examples"] == manifest["examples"] == state["examples"]
    assert progress["correct"] == state["correct"] == sum(r["correct"] for rs in results.values() for r in rs)
    for a in ADAPTERS:
        mined = sum(1 for p in pairs if p["adapter"] == a)
        assert mined == sum(r["pairs"][a] for rs in results.values() for r in rs)
        assert state["pairs_mined"][a] == state["pairs_trained"][a] == mined, (a, state["pairs_mined"], state["pairs_trained"])
        assert progress["pairs"][a] == {"mined": mined, "trained": mined}

    # Adapter versions only go up: checkpoint after checkpoint, and the published pointer is the last.
    final = state["versions"]
    assert progress["adapterVersions"] == final
    if any(final.values()):
        assert store.get_json(RunLayout.adapters_latest) == final
    history = sorted(
        (store.get_json(k) for k in store.list("trainer/state/") if not k.endswith("LATEST.json")),
        key=lambda st: (len(st["consumed"]), st["finished"]),
    )
    for a in ADAPTERS:
        versions = [st["versions"][a] for st in history]
        steps = [st["steps"][a] for st in history]
        assert versions == sorted(versions), (a, versions)
        for i in range(1, len(history)):
            assert (versions[i] > versions[i - 1]) == (steps[i] > steps[i - 1]), (a, versions, steps)
        published = {RunLayout.version_of(k) for k in store.list(RunLayout.adapter_versions_prefix(a))}
        assert final[a] == 0 or final[a] in published
        assert all(r["adapterVersions"][a] <= final[a] for rs in results.values() for r in rs)
        assert all(p["adapterVersions"][a] <= final[a] for p in pairs)
    by_consumed = {len(st["consumed"]): st for st in history if not st["finished"]}
    print(f"pairs mined {state['pairs_mined']}, versions {final}, correct {state['correct']}/{state['examples']}")
    return {"results": results, "pairs": pairs, "state": state, "history": by_consumed, "manifest": manifest}


def test_prepare_two_workers_and_a_trainer_over_s3(cluster):
    c = cluster(n=8)
    c.prepare()
    wport, tport = free_port(), free_port()
    c.worker("w1", "--metrics-port", str(wport), "--metrics-addr", "127.0.0.1")
    c.worker("w2")
    c.trainer("--metrics-port", str(tport), "--metrics-addr", "127.0.0.1")
    c.wait_for("the first results", lambda: c.store.list(RunLayout.results_root))
    worker_metrics = urllib.request.urlopen(f"http://127.0.0.1:{wport}/metrics", timeout=10).read().decode()
    trainer_metrics = urllib.request.urlopen(f"http://127.0.0.1:{tport}/metrics", timeout=10).read().decode()
    c.wait_all()
    run = check_run(c.store)
    assert f'flowdpo_run_phase{{phase="Training",run="{c.name}"}} 1.0' in worker_metrics
    assert "# TYPE flowdpo_shard_claims_total counter" in worker_metrics
    assert f'flowdpo_adapter_version{{adapter="answer",component="trainer",run="{c.name}"}}' in trainer_metrics

    # Both workers took part, each shard claimed once (no lease expired in a clean run).
    claims = [c.store.get_json(k) for k in c.store.list(RunLayout.claims_root) if "/attempt-" in k]
    assert sorted(x["shard"] for x in claims) == list(range(run["manifest"]["shards"]))
    assert {x["worker"] for x in claims} == {"w1", "w2"}
    # Bounded staleness: shard 3 opened only once the trainer had consumed 2 shards, after it had published
    # the versions of its checkpoint after shard 0, so shard 3 was rolled out with those versions or newer.
    after_first = run["history"][1]["versions"]
    for r in run["results"][3]:
        assert all(r["adapterVersions"][a] >= after_first[a] for a in ADAPTERS), (r["adapterVersions"], after_first)
    assert sum(run["state"]["pairs_trained"].values()) > 0, "the run trained nothing (no pair mined)"


def test_trainer_killed_and_restarted_resumes_exactly(cluster):
    c = cluster()
    c.prepare()
    c.worker("w1")
    c.worker("w2")
    c.trainer()
    c.wait_for("the trainer to consume a shard", lambda: c.consumed() >= 1, step=0.05)
    at = c.consumed()
    c.kill("trainer")
    assert c.store.get_json(RunLayout.progress)["phase"] == "Training"
    c.trainer()
    c.wait_all()
    run = check_run(c.store)
    assert at < run["manifest"]["shards"]
    assert "resumed at shard" in (c.tmp / "trainer.log").read_text()


def test_worker_killed_mid_shard_loses_its_lease_and_the_other_takes_over(cluster):
    c = cluster(lease=3.0)
    c.prepare()
    c.worker("w1")
    c.worker("w2")
    c.trainer()

    victim = c.wait_for("a worker in the middle of a shard", c.held_shard, step=0.05)
    c.kill(victim["worker"])
    c.procs.pop(victim["worker"])  # it died for good; the rest must finish without it
    shard = victim["shard"]
    assert not c.store.exists(RunLayout.results(shard))
    c.wait_all()
    check_run(c.store)
    takeover = c.store.get_json(RunLayout.claim_attempt(shard, victim["attempt"] + 1))
    survivor = ({"w1", "w2"} - {victim["worker"]}).pop()
    assert takeover["worker"] == survivor and takeover["previousWorker"] == victim["worker"]
    assert takeover["claimedAt"] >= victim["expiresAt"] - 0.01  # not before the dead worker's lease ran out


def test_s3_endpoint_down_for_five_seconds(cluster, s3_env):
    c = cluster()
    c.prepare()
    c.worker("w1")
    c.worker("w2")
    c.trainer()
    c.wait_for("the trainer to consume a shard", lambda: c.consumed() >= 1, step=0.05)
    at = c.consumed()
    s3_env.stop()
    try:
        time.sleep(5)
    finally:
        s3_env.restart()
    c.wait_all()
    run = check_run(c.store)
    assert at < run["manifest"]["shards"]  # the endpoint went down in the middle of the run
