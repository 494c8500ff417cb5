"""The `flowdpo worker` loop without a model (a trivial backend, a local store, the trainer simulated by
writing its pointers): back-pressure window, adapter hot-loading from adapters/LATEST.json, exit when
every shard has results. The real-model, multi-process version is tests/integration/test_distributed.py."""

from __future__ import annotations

import math
import sys
import threading
import time

import pytest

from flowdpo.flow.prompts import PromptBuilder
from flowdpo.loader import BackendError, make_backend
from flowdpo.metrics import Metrics
from flowdpo.run.prepare import ensure_spec, prepare
from flowdpo.run.worker import run_worker
from flowdpo.spec import parse_document
from flowdpo.storage import RunLayout, open_store
from tests.support.scripted import CharTokenizer


class EosBackend:
    """Every answer chunk is EOS (the flow ends at once); records adapter loads."""

    def __init__(self):
        self._versions = {"answer": 0, "stop": 0}
        self.loads: list[tuple] = []
        self.tokens_generated = 0

    def reset(self):
        pass

    def versions(self):
        return dict(self._versions)

    def generate(self, contexts, adapter, max_new_tokens, temperature, top_p):
        return [[CharTokenizer.eos_token_id] for _ in contexts]

    def next_token_logprobs(self, contexts, adapter, token_ids):
        return [[math.log(0.5)] * len(token_ids) for _ in contexts]

    def load_adapter(self, name, version, files):
        self.loads.append((name, version, sorted(files)))
        self._versions[name] = version


def _doc(tmp_path, backend="transformers"):
    return parse_document(
        {
            "apiVersion": "flowdpo.dev/v1alpha1",
            "kind": "FlowDPORun",
            "metadata": {"name": "loop"},
            "spec": {
                "data": {"numExamples": 10, "shardSize": 2},
                "rollout": {"batchExamples": 2, "maxPendingShards": 2, "backend": backend},
                "storage": {"uri": f"file://{tmp_path}/run"},
            },
        }
    )


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_worker_follows_backpressure_window_and_adapter_versions(tmp_path):
    doc = _doc(tmp_path)
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    assert prepare(store, doc)["shards"] == 5
    # The trainer has published answer v3 (folder first, then the pointer).
    store.put(f"{RunLayout.adapter('answer', 3)}/adapter_config.json", b"{}")
    store.put(f"{RunLayout.adapter('answer', 3)}/adapter_model.safetensors", b"w")
    store.put_json(RunLayout.adapters_latest, {"answer": 3, "stop": 0})

    backend, metrics, out = EosBackend(), Metrics("loop"), {}
    prompts = PromptBuilder(CharTokenizer(), doc.spec.flow)
    t = threading.Thread(
        target=lambda: out.update(
            run_worker(doc, metrics, lease_seconds=5, poll_seconds=0.05, worker_id="w", backend=backend, prompts=prompts)
        )
    )
    t.start()
    done = lambda: {RunLayout.shard_index(k) for k in store.list(RunLayout.results_root)}
    try:
        _wait(lambda: done() == {0, 1})
        time.sleep(0.5)  # trainer at 0, two results waiting: no claim of shard 2
        assert done() == {0, 1} and not store.list(RunLayout.claim_prefix(2))
        assert metrics.registry.get_sample_value("flowdpo_pending_shards", {"run": "loop"}) == 2
        store.put_json(RunLayout.trainer_latest, {"key": RunLayout.trainer_state(1)})
        _wait(lambda: 2 in done())
        time.sleep(0.5)
        assert done() == {0, 1, 2}  # the window is [1, 3)
        # A new version appears; the next shard is rolled out with it.
        store.put(f"{RunLayout.adapter('stop', 1)}/adapter_config.json", b"{}")
        store.put(f"{RunLayout.adapter('stop', 1)}/adapter_model.safetensors", b"s")
        store.put_json(RunLayout.adapters_latest, {"answer": 3, "stop": 1})
        store.put_json(RunLayout.trainer_latest, {"key": RunLayout.trainer_state(3)})
        t.join(30)
        assert not t.is_alive(), "the worker did not exit when every shard had results"
    finally:
        store.put_json(RunLayout.trainer_latest, {"key": RunLayout.trainer_state(5)})
        t.join(30)
    assert out["shards"] == [0, 1, 2, 3, 4]
    assert backend.loads == [
        ("answer", 3, ["adapter_config.json", "adapter_model.safetensors"]),
        ("stop", 1, ["adapter_config.json", "adapter_model.safetensors"]),
    ]
    versions = {s: store.get_jsonl(RunLayout.results(s))[0]["adapterVersions"] for s in range(5)}
    assert versions[0] == versions[2] == {"answer": 3, "stop": 0}
    assert versions[3] == versions[4] == {"answer": 3, "stop": 1}
    leases = [store.get_json(RunLayout.claim_lease(s, 1)) for s in range(5)]
    assert all(x["state"] == "done" and x["worker"] == "w" for x in leases)
    sample = metrics.registry.get_sample_value
    assert sample("flowdpo_shard_claims_total", {"run": "loop", "kind": "new"}) == 5
    assert sample("flowdpo_adapter_version", {"run": "loop", "adapter": "stop", "component": "worker"}) == 1
    assert sample("flowdpo_adapter_load_seconds_count", {"run": "loop", "adapter": "answer"}) == 1


def test_vllm_backend_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "flowdpo.flow.vllm_backend", None)
    with pytest.raises(BackendError, match="vLLM backend is not available"):
        make_backend(_doc(tmp_path, backend="vllm").spec)


def test_lingering_worker_waits_for_the_trainer_and_a_late_one_loads_no_model(tmp_path, monkeypatch):
    """Rollout pods are a Deployment: a worker whose shards are all done stays up (--linger) until the
    trainer finishes, and a restarted worker that finds every shard done exits without loading a model."""
    import flowdpo.run.worker as wm

    doc = _doc(tmp_path)
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    prompts = PromptBuilder(CharTokenizer(), doc.spec.flow)
    out = {}
    t = threading.Thread(
        target=lambda: out.update(
            run_worker(doc, lease_seconds=5, poll_seconds=0.05, worker_id="w", backend=EosBackend(),
                       prompts=prompts, linger=True)
        ),
        daemon=True,
    )
    t.start()
    try:
        # Move the back-pressure window as the trainer would, until every shard has results.
        for consumed in range(1, 6):
            _wait(lambda c=consumed: len(store.list(RunLayout.results_root)) >= min(5, c + 1))
            store.put_json(RunLayout.trainer_latest, {"key": RunLayout.trainer_state(consumed)})
        time.sleep(0.5)
        assert t.is_alive(), "the lingering worker exited before the trainer finished"
        store.put_json(RunLayout.progress, {"run": "loop", "phase": "Succeeded"})
        t.join(10)
        assert not t.is_alive() and out["shards"] == [0, 1, 2, 3, 4]
    finally:  # never leave the thread behind (pytest would wait for it)
        store.put_json(RunLayout.trainer_latest, {"key": RunLayout.trainer_state(5)})
        store.put_json(RunLayout.progress, {"run": "loop", "phase": "Succeeded"})
        t.join(10)

    def no_model(*a, **k):
        raise AssertionError("a worker with nothing to do loaded the model")

    monkeypatch.setattr(wm, "make_backend", no_model)
    assert run_worker(doc, poll_seconds=0.05, worker_id="late", linger=True)["shards"] == []
