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


def _doc(tmp_path, backend="transformers", pending=2):
    return parse_document(
        {
            "apiVersion": "flowdpo.dev/v1alpha1",
            "kind": "FlowDPORun",
            "metadata": {"name": "loop"},
            "spec": {
                "data": {"numExamples": 10, "shardSize": 2},
                "rollout": {"batchExamples": 2, "maxPendingShards": pending, "backend": backend, "inFlight": 3},
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


class EosChainBackend(EosBackend):
    """EosBackend that runs flows as request chains (`pin()`, as the vLLM backend): each request takes
    `delay` seconds, so the requests of several examples, and of two shards, overlap."""

    def __init__(self, delay=0.02, fail_after=None):
        super().__init__()
        self.delay, self.fail_after = delay, fail_after
        self.requests = 0
        self.pinned = 0
        self.lock = threading.Lock()

    def pin(self):
        backend = self

        class View:
            def __init__(self):
                self.v = backend.versions()
                with backend.lock:
                    backend.pinned += 1

            def versions(self):
                return dict(self.v)

            def _call(self):
                with backend.lock:
                    backend.requests += 1
                    if backend.fail_after is not None and backend.requests > backend.fail_after:
                        raise ConnectionError("vLLM went away")
                time.sleep(backend.delay)

            def generate(self, contexts, adapter, *a):
                self._call()
                return EosBackend.generate(backend, contexts, adapter, *a)

            def next_token_logprobs(self, contexts, adapter, token_ids):
                self._call()
                return EosBackend.next_token_logprobs(backend, contexts, adapter, token_ids)

            def release(self):
                with backend.lock:
                    backend.pinned -= 1

        return View()


def test_chain_worker_refills_across_shards_and_records_each_examples_versions(tmp_path):
    doc = _doc(tmp_path, backend="vllm", pending=10)  # no back-pressure here
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    backend = EosChainBackend()
    prompts = PromptBuilder(CharTokenizer(), doc.spec.flow)
    out = run_worker(doc, Metrics("loop"), lease_seconds=5, poll_seconds=0.05, worker_id="w", backend=backend, prompts=prompts)
    assert sorted(out["shards"]) == [0, 1, 2, 3, 4] and backend.pinned == 0
    for s in range(5):
        rs = store.get_jsonl(RunLayout.results(s))
        assert [r["exampleId"] for r in rs] == [e["id"] for e in store.get_jsonl(RunLayout.examples(s))]
        assert all(r["adapterVersions"] == {"answer": 0, "stop": 0} for r in rs)
        assert store.get_json(RunLayout.claim_lease(s, 1))["state"] == "done"
    # Shards overlapped: a later shard was claimed before an earlier one's results were written.
    claimed = {s: store.get_json(RunLayout.claim_attempt(s, 1))["claimedAt"] for s in range(5)}
    written = {s: store.get_json(RunLayout.claim_lease(s, 1))["renewedAt"] for s in range(5)}
    assert any(claimed[s + 1] < written[s] for s in range(4)), (claimed, written)


def test_chain_worker_that_fails_releases_every_shard_it_holds(tmp_path):
    doc = _doc(tmp_path, backend="vllm", pending=10)
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    backend = EosChainBackend(fail_after=5)
    prompts = PromptBuilder(CharTokenizer(), doc.spec.flow)
    with pytest.raises(ConnectionError, match="vLLM went away"):
        run_worker(doc, Metrics("loop"), lease_seconds=30, poll_seconds=0.05, worker_id="w", backend=backend, prompts=prompts)
    held = [RunLayout.parse_claim(k)[0] for k in store.list(RunLayout.claims_root) if "/attempt-" in k]
    assert held and not store.list(RunLayout.results_root)
    for s in held:  # released at once: another worker may take them without waiting out the lease
        assert store.get_json(RunLayout.claim_lease(s, 1))["state"] == "released"
