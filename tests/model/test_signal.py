"""The signal check (`flowdpo signal`, flowdpo/signal/check.py): it tells learnable pairs from pairs without a
signal, keeps the two sides of a question apart, resumes from storage, and runs end to end with the REAL
SmolLM2 model at tiny scale."""

from __future__ import annotations

import json
import random

import pytest

from flowdpo.signal.check import SignalSettings, split_by_question
from flowdpo.signal.render import summarize


def _pair(q: int, i: int, adapter: str = "answer") -> dict:
    return {"exampleId": f"q{q}", "pairId": f"q{q}/node-{i:02d}", "adapter": adapter, "chosenText": "yes"}


def test_split_keeps_every_question_on_one_side():
    pairs = [_pair(q, i) for q in range(20) for i in range(3)]
    train, held = split_by_question(pairs, 0.2, seed=1)
    assert {p["exampleId"] for p in train}.isdisjoint({p["exampleId"] for p in held})
    assert len({p["exampleId"] for p in held}) == 4 and len(train) + len(held) == len(pairs)
    assert split_by_question(pairs, 0.2, seed=1) == (train, held)  # seeded


@pytest.mark.parametrize(
    "kwargs, message",
    [({"questions": 1}, "questions"), ({"holdout": 1.0}, "holdout"), ({"epochs": 0}, "epochs"),
     ({"learning_rates": [2.0]}, "learning rates")],
)
def test_settings_refuse_what_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SignalSettings(**kwargs)


def test_verdict_needs_enough_held_out_pairs_and_an_interval_above_one_half():
    from flowdpo.spec import RunDocument

    doc = RunDocument.model_validate({"apiVersion": "flowdpo.dev/v1alpha1", "kind": "FlowDPORun",
                                      "metadata": {"name": "v"}, "spec": {}})
    held = [_pair(q, 0) for q in range(40)]
    fit = lambda acc, lo: {"lr": 1e-4, "epochs": [{"epoch": 1, "heldout": {"accuracy": acc, "ci95": [lo, 0.9], "pairs": 40}}]}
    lengths = {"budget": 96, "lengths": [10, 20]}
    yes = summarize(doc, SignalSettings(), "k", lengths, [], held, [], held, {"answer": [fit(0.8, 0.62)], "stop": []}, None)
    no = summarize(doc, SignalSettings(), "k", lengths, [], held, [], held, {"answer": [fit(0.55, 0.4)], "stop": []}, None)
    few = summarize(doc, SignalSettings(), "k", lengths, [], held[:3], [], held[:3], {"answer": [fit(1.0, 0.9)], "stop": []}, None)
    assert yes["verdict"]["answer"].startswith("learnable signal")
    assert no["verdict"]["answer"].startswith("no detectable signal")
    assert few["verdict"]["answer"].startswith("too few pairs")


def test_a_one_sided_stop_preference_is_called_a_prior_not_a_signal():
    """Stop pairs that all prefer "no" are learned perfectly by an adapter that never stops: the verdict says
    so, and reports the discrimination (AUC) when both kinds of node were held out."""
    from flowdpo.spec import RunDocument

    doc = RunDocument.model_validate({"apiVersion": "flowdpo.dev/v1alpha1", "kind": "FlowDPORun",
                                      "metadata": {"name": "v"}, "spec": {}})
    lengths = {"budget": 96, "lengths": [10, 20]}

    def stop_fit(auc=None, ci=None):
        stop = {"auc": auc, "aucCi95": ci} if auc is not None else None
        return {"lr": 1e-4, "epochs": [{"epoch": 1, "heldout": {"accuracy": 1.0, "ci95": [0.9, 1.0], "pairs": 40}}],
                "stop": stop}

    def verdict(held, fit):
        return summarize(doc, SignalSettings(), "k", lengths, [], held, [], held, {"answer": [], "stop": [fit]}, None)[
            "verdict"]["stop"]

    no_only = [{**_pair(q, 0, "stop"), "chosenText": "no"} for q in range(40)]
    assert verdict(no_only, stop_fit()).startswith("one-sided: every held-out Stop pair prefers 'no'")
    assert "never stop" in verdict(no_only, stop_fit())
    mixed = no_only[:30] + [_pair(q, 1, "stop") for q in range(10)]
    assert verdict(mixed, stop_fit(0.9, [0.8, 0.97])).startswith("learnable signal")
    assert verdict(mixed, stop_fit(0.9, [0.8, 0.97])).endswith("discriminates (AUC of P(yes) 0.90, 95% CI 0.80-0.97)")
    assert "no discrimination shown" in verdict(mixed, stop_fit(0.55, [0.4, 0.7]))


@pytest.mark.slow
def test_offline_dpo_learns_consistent_pairs_and_not_shuffled_ones():
    """The measuring stick itself: pairs that always prefer one answer style are learned (held-out accuracy
    near 1); the same pairs with chosen/rejected swapped at random stay near 1/2."""
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.models import load_base_model
    from flowdpo.signal.check import fit
    from flowdpo.spec import RunDocument
    from flowdpo.train.adapters import adapter_files, attach_adapters

    doc = RunDocument.model_validate({
        "apiVersion": "flowdpo.dev/v1alpha1", "kind": "FlowDPORun", "metadata": {"name": "s"},
        "spec": {"training": {"batchSize": 8, "microBatchSize": 8, "beta": 0.5}},
    })
    model, tok = load_base_model(doc.spec.model)
    model = attach_adapters(model, doc.spec.lora, seed=0)
    prompts = PromptBuilder(tok, doc.spec.flow)
    initial = {a: adapter_files(model, a)["adapter_model.safetensors"] for a in ("answer", "stop")}
    good, bad = tok.encode(" The answer is 12.", add_special_tokens=False), tok.encode(" I do not know.", add_special_tokens=False)

    def pairs(qs, shuffle):
        rng = random.Random(0)
        out = []
        for q in qs:
            c, r = (good, bad) if not shuffle or rng.random() < 0.5 else (bad, good)
            out.append({"exampleId": f"q{q}", "pairId": f"q{q}/node-00", "adapter": "answer", "scoring": "sequence",
                        "promptIds": prompts.answer_prompt(f"What is {q} + {q + 1}?"), "chosenIds": c, "rejectedIds": r})
        return out

    settings = SignalSettings(questions=24, epochs=2)
    learned = fit(model, tok, prompts, doc, "answer", 1e-3, pairs(range(16), False), pairs(range(16, 24), False),
                  settings, initial, 1.96)
    shuffled = fit(model, tok, prompts, doc, "answer", 1e-3, pairs(range(16), True), pairs(range(16, 24), True),
                   settings, initial, 1.96)
    assert learned.epochs[-1]["heldout"]["accuracy"] == 1.0
    assert 0.2 <= shuffled.epochs[-1]["heldout"]["accuracy"] <= 0.8


@pytest.mark.slow
def test_signal_command_end_to_end_and_resumes_from_storage(tiny_run_file, tmp_path, monkeypatch):
    from flowdpo.cli.main import main
    from flowdpo.signal import check as signal_check

    run = tiny_run_file(name="sig", n=4, shard=4)
    out = tmp_path / "out"
    args = ["signal", str(run), "--questions", "6", "--epochs", "1", "--lr", "1e-3", "--length-questions", "3",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "signal.json").read_text())
    assert report["questions"] == 6 and report["lengths"]["questions"] == 3
    assert set(report["verdict"]) == {"answer", "stop"}
    assert (out / "signal.png").stat().st_size > 0 and "# Signal check" in (out / "signal.md").read_text()
    for fits in report["fits"].values():
        for f in fits:
            h = f["epochs"][-1]["heldout"]
            assert 0.0 <= h["accuracy"] <= 1.0 and h["pairs"] > 0
    # The questions are not training questions.
    from flowdpo.data import load_examples
    from flowdpo.spec import load_document

    doc = load_document(run)
    train = {ex.question for ex in load_examples(doc.spec.data)[0]}
    assert not train & {ex.question for ex in signal_check.signal_questions(doc, 6)}

    # A second run reuses the mined pairs and the fits: no model call mines or trains again.
    def boom(*a, **k):
        raise AssertionError("recomputed instead of reused")

    monkeypatch.setattr(signal_check, "natural_lengths", boom)
    monkeypatch.setattr(signal_check, "fit", boom)
    monkeypatch.setattr("flowdpo.flow.rollouts.rollout_examples", boom)
    assert main(args) == 0
    assert json.loads((out / "signal.json").read_text())["mined"] == report["mined"]
