"""Adapter arrival checks without a server: how a canary file is read (and refused), and how the workers'
checks become progress.json's `adaptersInSync` (flowdpo/train/canary.py, flowdpo/run/progress.py). The
checks against a real vLLM server: tests/integration/test_vllm_chains.py."""

import json

import pytest

from flowdpo.run.progress import CHECK_FRESH_SECONDS, adapters_in_sync
from flowdpo.storage import RunLayout, open_store
from flowdpo.train import canary


class Fixed:
    def __init__(self, values):
        self.values, self.asked = values, []

    def next_token_logprobs(self, contexts, adapter, token_ids):
        self.asked.append((contexts, adapter, token_ids))
        return [self.values]


def _file(adapter="answer", version=3, logprobs=(-0.5, -1.0, -2.0)):
    return json.dumps({"adapter": adapter, "version": version, "contextIds": [1, 2, 3], "tokenIds": [7, 8, 9],
                       "logprobs": list(logprobs), "tolerance": 0.15}).encode()  # fmt: skip


def test_check_compares_the_served_log_probs_with_the_trainers():
    backend = Fixed([-0.52, -0.95, -2.1])
    ok = canary.check(backend, "answer", 3, _file())
    assert backend.asked == [([[1, 2, 3]], "answer", [7, 8, 9])]
    assert ok.arrived and ok.deviation == pytest.approx(0.17 / 3) and ok.max_deviation == pytest.approx(0.1)
    stale = canary.check(Fixed([-0.9, -0.7, -2.0]), "answer", 3, _file())
    assert not stale.arrived and stale.record()["deviation"] == pytest.approx(0.7 / 3, abs=1e-4)
    with pytest.raises(ValueError, match=r"canary.json is for stop v3"):
        canary.check(backend, "answer", 3, _file(adapter="stop"))
    with pytest.raises(ValueError, match=r"answer v3: canary.json is not a canary"):
        canary.check(backend, "answer", 3, b"{}")


def test_adapters_in_sync_aggregates_fresh_worker_checks(tmp_path):
    store = open_store(f"file://{tmp_path}/run")
    assert adapters_in_sync(store) is None
    now = 1_000_000.0

    def put(worker, ok, dev, at):
        store.put_json(RunLayout.adapter_check(worker), {"worker": worker, "checkedAt": at, "inSync": ok,
                                                         "checks": [{"deviation": dev}]})  # fmt: skip

    put("w1", True, 0.03, now - 10)
    put("w2/pod:x", True, 0.05, now - 20)
    assert adapters_in_sync(store, now) == {"inSync": True, "workers": 2, "notInSync": [], "maxDeviation": 0.05}
    put("w3", False, 0.8, now - 5)
    assert adapters_in_sync(store, now)["notInSync"] == ["w3"]
    put("w3", False, 0.8, now - CHECK_FRESH_SECONDS - 1)  # a worker gone long ago no longer counts
    assert adapters_in_sync(store, now)["inSync"] is True
    assert RunLayout.adapter_check("w2/pod:x") == "checks/adapters/w2-pod-x.json"
