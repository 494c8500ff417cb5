"""Compile and evaluate (issue 5): the equal-data rule, evaluation disjoint from training/compile questions,
the spec section, and `flowdpo compile` + `flowdpo eval` end to end on a tiny real run (SmolLM2)."""

from __future__ import annotations

import json

import pytest
import yaml

from flowdpo.compile.common import CompileError, EvalLeakError, normalize_question, open_run
from flowdpo.compile.eval_sets import _drop_forbidden, check_disjoint, forbidden_questions, load_eval_set
from flowdpo.compile.eval_table import ROW_LABELS, cell, render_table
from flowdpo.compile.traces import check_equal_data, select_equal_data
from flowdpo.data import Example
from flowdpo.names import COMPILE_SOURCES
from flowdpo.run.prepare import RunConflictError, ensure_spec, prepare
from flowdpo.spec import EvalSetSpec, RunSpec, SpecError, parse_document
from flowdpo.storage import RunLayout, open_store

FIXTURE_GSM8K = "tests/fixtures/gsm8k_sample.jsonl"


def _t(q, sample, correct, text=None):
    return {"exampleId": q, "sample": sample, "correct": correct, "trace": text or f"{q}#{sample}"}


# -- the equal-data rule -----------------------------------------------------------------------------
def test_equal_data_keeps_the_questions_every_source_solved_with_one_trace_each():
    questions = ["q1", "q2", "q3", "q4", "q5"]
    candidates = {
        "ground-truth": [_t(q, 0, q != "q5") for q in questions],  # q5: solution does not grade correct
        "self-generated": [
            _t("q1", 0, False),
            _t("q1", 1, True),
            _t("q1", 2, True),
            _t("q2", 0, True),
            _t("q3", 0, False),
            _t("q4", 0, True),
            _t("q5", 0, True),
        ],
        "flow-generated": [
            _t("q4", 1, True),
            _t("q4", 0, True),
            _t("q2", 2, True),
            _t("q1", 0, True),
            _t("q3", 0, True),
            _t("q5", 1, True),
        ],
    }
    sel = select_equal_data(candidates, questions)
    # q3: self-generated never correct; q5: no correct ground truth -> dropped for EVERY source.
    assert sel.questions == ["q1", "q2", "q4"]
    assert {s: [t["exampleId"] for t in ts] for s, ts in sel.traces.items()} == {
        s: ["q1", "q2", "q4"] for s in candidates
    }
    assert check_equal_data(sel.traces) == ["q1", "q2", "q4"]
    # One trace per question: the correct attempt with the lowest sample index.
    assert [t["sample"] for t in sel.traces["self-generated"]] == [1, 0, 0]
    assert [t["sample"] for t in sel.traces["flow-generated"]] == [0, 2, 0]
    assert all(t["correct"] for ts in sel.traces.values() for t in ts)
    assert sel.stats["self-generated"] == {
        "attempts": 7,
        "correctAttempts": 5,
        "questionsSolved": 4,
        "kept": 3,
    }
    assert (
        sel.stats["flow-generated"]["questionsSolved"] == 5
        and sel.stats["ground-truth"]["questionsSolved"] == 4
    )
    # The cap keeps the first questions in compile-set order, still equal across sources.
    capped = select_equal_data(candidates, questions, max_traces=2)
    assert capped.questions == ["q1", "q2"] and all(len(ts) == 2 for ts in capped.traces.values())


def test_equal_data_empty_intersection_and_violations():
    sel = select_equal_data({"a": [_t("q1", 0, True)], "b": [_t("q2", 0, True)]}, ["q1", "q2"])
    assert sel.questions == [] and sel.traces == {"a": [], "b": []}
    with pytest.raises(ValueError, match="equal-data rule violated"):
        check_equal_data({"a": [_t("q1", 0, True), _t("q2", 0, True)], "b": [_t("q1", 0, True)]})
    with pytest.raises(ValueError, match="equal-data rule violated"):
        check_equal_data(
            {"a": [_t("q1", 0, True), _t("q2", 0, True)], "b": [_t("q2", 0, True), _t("q1", 0, True)]}
        )
    with pytest.raises(ValueError, match="more than one trace"):
        check_equal_data({"a": [_t("q1", 0, True), _t("q1", 1, True)]})


# -- evaluation never sees training or compile questions ---------------------------------------------
def _ex(i, q):
    return Example(f"e{i}", q, "1", "t")


def test_check_disjoint_and_filter():
    forbidden = {normalize_question("What is 2 + 3?"): "training:x-1"}
    clean = [_ex(1, "What is 4 + 4?")]
    check_disjoint(clean, forbidden)
    leaky = clean + [_ex(2, "  what is 2  +  3? ")]  # whitespace and case do not hide a leak
    with pytest.raises(EvalLeakError, match="also used for training/compile: e2 = training:x-1"):
        check_disjoint(leaky, forbidden)
    kept, dropped = _drop_forbidden(leaky + [_ex(3, "What is 4 + 4?")], forbidden)
    assert [e.id for e in kept] == ["e1"] and dropped == 2  # the leak and a duplicate


def _doc(tmp_path, name="c1", compile_section=None, data=None):
    body = {
        "apiVersion": "flowdpo.dev/v1alpha1",
        "kind": "FlowDPORun",
        "metadata": {"name": name},
        "spec": {
            "data": data or {"numExamples": 40, "shardSize": 8, "seed": 5},
            "storage": {"uri": f"file://{tmp_path}/runs/{name}"},
            **({"compile": compile_section} if compile_section else {}),
        },
    }
    return parse_document(body)


def test_heldout_and_file_eval_sets_exclude_training_and_compile_questions(tmp_path):
    # 1-digit products: only 100 distinct questions, so training/compile/held-out collide unless filtered.
    data = {
        "numExamples": 30,
        "shardSize": 10,
        "seed": 2,
        "tasks": [
            {"name": "products", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}
        ],
    }
    doc = _doc(tmp_path, data=data, compile_section={"numQuestions": 30})
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    from flowdpo.compile.common import ensure_compile_questions, training_questions

    compile_qs = ensure_compile_questions(store, doc)
    train_qs = training_questions(store)
    forbidden = forbidden_questions(store)
    assert {normalize_question(e.question) for e in compile_qs + train_qs} == set(forbidden)
    heldout, info = load_eval_set(doc, EvalSetSpec(name="heldout", num_questions=20), forbidden)
    assert len(heldout) == 20 == info["questions"]
    assert not {normalize_question(e.question) for e in heldout} & set(forbidden)

    # A file eval set that contains a training question: the question is dropped, never evaluated.
    from flowdpo.data.sources import load_source_examples
    from flowdpo.spec import DataSpec

    good, _ = load_source_examples(DataSpec(source="gsm8k", path=FIXTURE_GSM8K), split="test")
    rows = [{"question": e.question, "answer": f"{e.solution}"} for e in good]
    leaked = dict(rows[0], question=train_qs[0].question)
    path = tmp_path / "gsm8k_test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [leaked] + rows[1:4]))
    got, info = load_eval_set(doc, EvalSetSpec(name="gsm8k", path=str(path)), forbidden)
    assert len(got) == 3 and info["droppedOverlapping"] == 1
    assert train_qs[0].question not in {e.question for e in got}


def test_open_run_checks_the_spec_and_that_training_finished(tmp_path):
    doc = _doc(tmp_path)
    store = open_store(doc.storage_uri())
    with pytest.raises(CompileError, match="no run here"):
        open_run(doc)
    ensure_spec(store, doc)
    with pytest.raises(CompileError, match="training has not finished"):
        open_run(doc)
    store.put_json(RunLayout.progress, {"phase": "Succeeded"})
    assert open_run(doc).uri == store.uri
    # The compile section may change after training (also for resuming `flowdpo run`); nothing else may.
    assert open_run(_doc(tmp_path, compile_section={"numQuestions": 7}))
    ensure_spec(store, _doc(tmp_path, compile_section={"numQuestions": 7}))
    with pytest.raises(RunConflictError, match="different spec"):
        ensure_spec(store, _doc(tmp_path, data={"numExamples": 41, "shardSize": 8, "seed": 5}))
    with pytest.raises(RunConflictError, match=r"spec\.data differ"):
        open_run(_doc(tmp_path, data={"numExamples": 41, "shardSize": 8, "seed": 5}))


# -- spec and table ----------------------------------------------------------------------------------
def test_compile_spec_defaults_are_the_papers():
    c = RunSpec().compile
    assert c.num_questions == 1500
    s = c.sft
    assert (s.lora.r, s.lora.alpha, s.lora.dropout, s.lora.target_modules) == (16, 16, 0.05, "all-linear")
    assert (
        s.learning_rate,
        s.epochs,
        s.warmup_ratio,
        s.batch_size,
        s.gradient_accumulation,
        s.grad_clip,
    ) == (2e-4, 3.0, 0.1, 16, 2, 1.0)
    assert [e.id for e in c.evaluation.resolved_sets(RunSpec(data={"source": "metamathqa"}).data)] == [
        "gsm8k-test",
        "math-test",
    ]
    assert [e.id for e in c.evaluation.resolved_sets(RunSpec().data)] == ["heldout"]
    assert RunSpec().lora.r == 8  # the flow's LoRA keeps its own (paper) default
    partial = RunSpec(compile={"sft": {"lora": {"dropout": 0.1}}}).compile.sft.lora
    assert (partial.r, partial.alpha, partial.dropout) == (
        16,
        16,
        0.1,
    )  # a partial override keeps r16/alpha16


@pytest.mark.parametrize(
    "section, field, words",
    [
        (
            {"evaluation": {"sets": [{"name": "heldout"}]}},
            "spec.compile.evaluation.sets.0",
            "numQuestions is required",
        ),
        ({"evaluation": {"sets": [{"name": "jsonl"}]}}, "spec.compile.evaluation.sets.0", "path is required"),
        (
            {"evaluation": {"sets": [{"name": "gsm8k"}, {"name": "gsm8k"}]}},
            "spec.compile.evaluation.sets",
            "distinct",
        ),
        ({"sft": {"learningRate": 0}}, "spec.compile.sft.learningRate", "greater than 0"),
        ({"numQestions": 5}, "spec.compile.numQestions", "unknown field"),
    ],
)
def test_invalid_compile_sections_name_the_field(tmp_path, section, field, words):
    body = yaml.safe_load(_doc(tmp_path).to_yaml())
    body["spec"]["compile"] = section
    with pytest.raises(SpecError) as e:
        parse_document(body, "run.yaml")
    assert f"  {field}: " in str(e.value) and words in str(e.value)


def test_table_cells_have_wilson_intervals_and_n():
    c = cell([{"correct": True}] * 3 + [{"correct": False}])
    assert c["examples"] == 4 and c["correct"] == 3 and c["accuracy"] == 0.75
    assert 0.3 < c["ci95"][0] < 0.75 < c["ci95"][1] < 1.0
    table = {
        "run": "r",
        "model": "m",
        "temperature": 0.0,
        "tracesPerSource": 3,
        "sets": [{"id": "heldout", "title": "held-out tasks", "questions": 4}],
        "rows": [{"row": "zero-shot", "label": ROW_LABELS["zero-shot"], "results": {"heldout": c}}],
    }
    md = render_table(table)
    assert "| 0-shot | 75.0 [" in md and "(3/4) |" in md and "held-out tasks (n=4)" in md


# -- end to end on the real model --------------------------------------------------------------------
E2E_RUN = """
apiVersion: flowdpo.dev/v1alpha1
kind: FlowDPORun
metadata: {{name: compiled}}
spec:
  flow:
    chunkTokens: 6
    maxChunks: 2
    temperature: 0.7
    answerSystemPrompt: "You are a helpful math assistant. Reply with the result only."
    stopSystemPrompt: "Reply yes or no."
    stopUserTemplate: "Question: {{problem}}\\nAnswer: {{solution}}\\nComplete?"
  data:
    numExamples: 4
    shardSize: 4
    seed: 3
    tasks: [{{name: products, config: {{min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}}}]
  storage: {{uri: "file://{root}/runs/compiled"}}
  seed: 1
  compile:
    numQuestions: 8
    samplesPerQuestion: 3
    batchQuestions: 8
    sft: {{epochs: 1, warmupRatio: 0, batchSize: 4, gradientAccumulation: 1, maxLength: 128, maxSteps: 1}}
    evaluation:
      maxNewTokens: 10
      batchSize: 16
      flowRows: true
      flowSamples: 2
      sets:
        - {{name: heldout, numQuestions: 6}}
        - {{name: gsm8k, path: {fixture}, numQuestions: 3}}
"""


def _finished_run(doc) -> dict[str, int]:
    """A run whose training finished, as compile sees it: prepared examples, spec, progress 'Succeeded', and
    published Answer/Stop adapter folders (made by the trainer's own `adapter_files`) behind
    adapters/LATEST.json. (A real `flowdpo run`, even of 2 examples, takes minutes on this CPU; the
    trainer's publishing is covered by test_real_model.py.)"""
    import torch

    from flowdpo.models import load_base_model
    from flowdpo.names import ADAPTERS
    from flowdpo.train.adapters import adapter_files, attach_adapters

    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    prepare(store, doc)
    model, _ = load_base_model(doc.spec.model)
    model = attach_adapters(model, doc.spec.lora, doc.spec.seed)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a small trained-looking update (LoRA B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 1e-4)
    versions = {"answer": 3, "stop": 2}
    for a in ADAPTERS:
        for name, blob in adapter_files(model, a).items():
            store.put(f"{RunLayout.adapter(a, versions[a])}/{name}", blob)
    store.put_json(RunLayout.adapters_latest, versions)
    store.put_json(RunLayout.progress, {"run": doc.name, "phase": "Succeeded"})
    return versions


@pytest.mark.slow
def test_compile_then_eval_end_to_end(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from safetensors.torch import load as load_safetensors

    from flowdpo.cli.main import main
    from flowdpo.grading import grade
    from flowdpo.spec import load_document

    run_file = tmp_path / "compiled.yaml"
    run_file.write_text(E2E_RUN.format(root=tmp_path, fixture=Path(FIXTURE_GSM8K).resolve()))
    doc = load_document(run_file)
    latest = _finished_run(doc)
    store = open_store(doc.storage_uri())

    assert main(["compile", str(run_file), "--no-progress"]) == 0
    manifest = store.get_json(RunLayout.compile_manifest)
    questions = store.get_jsonl(RunLayout.compile_questions)
    assert manifest["compileQuestions"] == len(questions) == 8 and manifest["adapterVersions"] == latest
    traces = {s: store.get_jsonl(RunLayout.compile_traces(s)) for s in COMPILE_SOURCES}
    # Equal-data rule: the same questions, in the same order, and the same number of traces per source.
    kept = [t["exampleId"] for t in traces["ground-truth"]]
    assert kept and kept == manifest["keptQuestions"]
    assert all([t["exampleId"] for t in traces[s]] == kept for s in COMPILE_SOURCES)
    assert {len(ts) for ts in traces.values()} == {manifest["tracesPerSource"]}
    for s, ts in traces.items():
        for t in ts:  # kept traces reach the gold answer and carry provenance
            assert t["source"] == s and t["run"] == "compiled" and grade(t["trace"], t["gold"]).correct
            assert (t.get("adapterVersions") == latest) == (s == "flow-generated")
    for s in COMPILE_SOURCES:
        assert store.exists(f"{RunLayout.sft_adapter(s)}/adapter_model.safetensors")
        cfg = json.loads(store.get(f"{RunLayout.sft_adapter(s)}/adapter_config.json"))
        assert (cfg["r"], cfg["lora_alpha"]) == (16, 16)
        # One optimizer step at lr 2e-4 moved LoRA B away from its zero initialisation.
        weights = load_safetensors(store.get(f"{RunLayout.sft_adapter(s)}/adapter_model.safetensors"))
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
        lg = store.get_json(RunLayout.sft_log(s))
        assert (
            lg["steps"] == 1
            and lg["traces"] == len(kept)
            and lg["hyperparameters"]["sft"]["learningRate"] == 2e-4
        )
    logs_before = {s: store.get_json(RunLayout.sft_log(s)) for s in COMPILE_SOURCES}
    # A second compile reuses every trace part and every adapter (nothing regenerated or retrained).
    assert main(["compile", str(run_file), "--no-progress"]) == 0
    assert {s: store.get_json(RunLayout.sft_log(s)) for s in COMPILE_SOURCES} == logs_before

    assert main(["eval", str(run_file), "--no-progress"]) == 0
    table = store.get_json(RunLayout.eval_table_json)
    assert [r["row"] for r in table["rows"]] == (
        ["zero-shot"] + [f"sft-{s}" for s in COMPILE_SOURCES] + ["flow-trained", "flow-untrained", "zero-shot-sampled"]
    )
    # Rows compared with each other decode alike: the flow rows and the sampled 0-shot row use the flow's
    # sampling and budget; the compile table's 0-shot and SFT rows use compile.evaluation's settings.
    decoding = {r["row"]: r["decoding"] for r in table["rows"]}
    assert decoding["flow-untrained"] == decoding["zero-shot-sampled"] == decoding["flow-trained"]
    assert decoding["zero-shot-sampled"]["temperature"] > 0 and decoding["zero-shot"]["temperature"] == 0
    assert decoding["zero-shot"] == decoding["sft-flow-generated"]
    # The flow rows answered with the flow itself: chunks and an end reason per answer, 2 answers per question.
    flow_rows = store.get_jsonl(RunLayout.eval_outcomes("flow-trained", "heldout"))
    assert flow_rows and all(r["chunks"] >= 1 and r["endReason"] for r in flow_rows)
    assert [r["sample"] for r in flow_rows] == [0, 1] * 6
    sampled = {r["row"]: r["results"]["heldout"] for r in table["rows"]}
    assert sampled["flow-untrained"]["examples"] == sampled["zero-shot-sampled"]["examples"] == 12
    assert sampled["zero-shot"]["examples"] == 6
    # The Stop decision's discrimination, untrained vs trained, on the untrained flow's partial answers.
    stop = table["stopDiscrimination"]
    partials = sum(len(r["partials"]) for s in ("heldout", "gsm8k-test")
                   for r in store.get_jsonl(RunLayout.eval_outcomes("flow-untrained", s)))
    assert stop["partials"] == partials and set(stop) >= {"untrained", "trained"}
    assert not store.list("eval/partial/")  # the flow rows finished: their block checkpoints are gone
    # Every partial's label and P(yes) per Stop model are stored beside the table (the report's ROC curves).
    scores = store.get_json(RunLayout.eval_stop)["scores"]
    assert "scores" not in stop and sum(scores["complete"]) == stop["complete"]
    assert len(scores["untrained"]) == len(scores["trained"]) == partials
    assert all(0.0 <= p <= 1.0 for p in scores["untrained"] + scores["trained"])
    # The report compares flow rows with several samples per question by a bootstrap clustered by question.
    from flowdpo.report.compile_table import collect_compile

    comparisons = collect_compile(store)["pairedVsFlow"]
    flow_vs = [c for c in comparisons if c["first"] == "flow-trained" and c["second"] == "flow-untrained"]
    assert flow_vs and all(c["method"] == "paired bootstrap clustered by question" for c in flow_vs)
    assert any(c["second"] == "zero-shot-sampled" for c in comparisons)
    assert [s["id"] for s in table["sets"]] == ["heldout", "gsm8k-test"]
    assert [s["questions"] for s in table["sets"]] == [6, 3]
    for row in table["rows"]:
        for s in table["sets"]:
            c = row["results"][s["id"]]
            assert c["examples"] == s["questions"] * c.get("samplesPerQuestion", 1) and len(c["ci95"]) == 2
    md = store.get(RunLayout.eval_table_md).decode()
    assert all(label in md for label in ROW_LABELS.values()) and "(n=6)" in md
    # A rerun (e.g. after an interruption) reuses every stored row: no model is loaded, the table is the same.
    import flowdpo.compile.eval as eval_module

    def no_model(*a, **k):
        raise AssertionError("eval reloaded the model although every row's outcomes were stored")

    monkeypatch.setattr(eval_module, "load_sft_models", no_model)
    monkeypatch.setattr(eval_module, "load_flow_model", no_model)
    assert main(["eval", str(run_file), "--no-progress"]) == 0
    again = store.get_json(RunLayout.eval_table_json)
    assert [r["results"] for r in again["rows"]] == [r["results"] for r in table["rows"]]
    # A Stop result stored without per-partial scores (an older flowdpo) is recomputed: the model is needed.
    stored_stop = store.get_json(RunLayout.eval_stop)
    store.put_json(RunLayout.eval_stop, {k: v for k, v in stored_stop.items() if k != "scores"})
    with pytest.raises(AssertionError, match="reloaded the model"):
        main(["eval", str(run_file), "--no-progress"])
    store.put_json(RunLayout.eval_stop, stored_stop)
    # --stored-only rebuilds the table without a model; a row whose settings changed is refused, not re-answered.
    assert main(["eval", str(run_file), "--no-progress", "--stored-only"]) == 0
    changed = yaml.safe_load(run_file.read_text())
    changed["spec"]["compile"]["evaluation"]["temperature"] = 0.5
    changed_file = run_file.with_name("changed.yaml")
    changed_file.write_text(yaml.safe_dump(changed))
    assert main(["eval", str(changed_file), "--no-progress", "--stored-only"]) == 2
    assert "--stored-only: no stored outcomes match" in capsys.readouterr().err
    # --rows evaluates only the rows named (a control run's trained flow); an unknown row is refused.
    assert main(["eval", str(run_file), "--no-progress", "--rows", "flow-trained"]) == 0
    assert [r["row"] for r in store.get_json(RunLayout.eval_table_json)["rows"]] == ["flow-trained"]
    assert main(["eval", str(run_file), "--no-progress", "--rows", "sft-nope"]) == 2
    assert (store.local_root / RunLayout.eval_table_md).is_file()
    # Evaluation never saw a training or compile question (checked independently of the eval code).
    used = {normalize_question(e["question"]) for e in questions}
    used |= {
        normalize_question(r["question"])
        for s in range(store.get_json(RunLayout.manifest)["shards"])
        for r in store.get_jsonl(RunLayout.examples(s))
    }
    for row in table["rows"]:
        for s in table["sets"]:
            evaluated = store.get_jsonl(RunLayout.eval_outcomes(row["row"], s["id"]))
            assert len(evaluated) == s["questions"] * row["results"][s["id"]].get("samplesPerQuestion", 1)
            assert not {normalize_question(r["question"]) for r in evaluated} & used


class _Interrupted(Exception):
    pass


def _trained_flow_of_a_finished_run(tmp_path):
    """(doc, store, backend, prompts): a finished run and its trained flow (real SmolLM2 with the run's adapters)."""
    from pathlib import Path

    from flowdpo.loader import load_trained_flow
    from flowdpo.spec import load_document

    run_file = tmp_path / "compiled.yaml"
    run_file.write_text(E2E_RUN.format(root=tmp_path, fixture=Path(FIXTURE_GSM8K).resolve()))
    doc = load_document(run_file)
    _finished_run(doc)
    store = open_store(doc.storage_uri())
    backend, prompts = load_trained_flow(doc, store, 8, cast_lora=False)
    return doc, store, backend, prompts


def _cut_after_first_block_then_resumed(ask, store, key: str):
    """`ask(checkpoint)` stopped right after its first block was saved under `key`, then run again from that
    checkpoint: (what was saved, the resumed answers)."""
    from flowdpo.compile.eval_answers import RowCheckpoint

    class StopAfterFirstBlock(RowCheckpoint):
        def save(self, *args):
            super().save(*args)
            raise _Interrupted

    with pytest.raises(_Interrupted):
        ask(StopAfterFirstBlock(store, key, "fp"))
    saved = store.get_json(key)
    return saved, ask(RowCheckpoint(store, key, "fp"))


def test_an_interrupted_flow_row_resumes_with_the_same_answers(tmp_path):
    """A flow row is long (questions x samples flows): `flowdpo eval` saves it after every block with the random
    state, and a row cut off after its first block resumes there and ends with exactly the answers of an
    uninterrupted row (real SmolLM2 flow with the run's adapters)."""
    from flowdpo.compile.eval_answers import RowCheckpoint, answer_with_flow

    doc, store, backend, prompts = _trained_flow_of_a_finished_run(tmp_path)
    examples = [Example(f"q{i}", f"What is {i} + {i + 3}?", str(2 * i + 3), "sum") for i in range(4)]
    ask = lambda checkpoint=None: answer_with_flow(
        backend, prompts, doc.spec, examples, trained=True, samples=2, batch_questions=2, checkpoint=checkpoint
    )
    whole = ask()
    key = "eval/partial/flow-trained.json"
    saved, resumed = _cut_after_first_block_then_resumed(ask, store, key)
    assert saved["next"] == 2 and len(saved["answers"]) == 4  # 2 questions x 2 samples
    assert [(r["exampleId"], r["sample"], r["answer"]) for r in resumed] == [
        (r["exampleId"], r["sample"], r["answer"]) for r in whole
    ]
    # Another row's (or another setting's) checkpoint is not used: the row starts again from its first block.
    assert RowCheckpoint(store, key, "other settings").load() is None


def test_an_interrupted_sampled_one_pass_row_resumes_with_the_same_answers(tmp_path):
    """A sampled one-pass row (questions x samples answers; thousands on a held-out set) is answered in blocks,
    each saved with the random state: cut off after its first block, it resumes there and ends with exactly the
    answers of an uninterrupted row (real SmolLM2, temperature 0.7)."""
    from flowdpo.compile.eval_answers import answer_questions

    doc, store, backend, prompts = _trained_flow_of_a_finished_run(tmp_path)
    examples = [Example(f"q{i}", f"What is {i} + {i + 3}?", str(2 * i + 3), "sum") for i in range(3) for _ in range(2)]
    ask = lambda checkpoint=None: answer_questions(
        backend, prompts, None, examples, 12, 0.7, doc.spec.seed, 1.0, block=2, checkpoint=checkpoint
    )
    whole = ask()
    saved, resumed = _cut_after_first_block_then_resumed(ask, store, "eval/partial/zero-shot-sampled.json")
    assert saved["next"] == 2
    assert [(r["exampleId"], r["answer"]) for r in resumed] == [(r["exampleId"], r["answer"]) for r in whole]
    assert len({r["answer"] for r in whole}) > 1  # sampled: the comparison is not of constant texts


@pytest.mark.slow
def test_sft_gradient_checkpointing_changes_no_result(tmp_path, monkeypatch):
    """Compile's SFT recomputes activations in the backward pass to fit in memory (the 0.5B model's SFT was
    killed for memory without it). That must not change what is learned: two steps with LoRA dropout and
    gradient accumulation give bitwise the same adapter and losses with and without it (real SmolLM2)."""
    import torch
    from safetensors.torch import load
    from transformers import modeling_utils

    from flowdpo.compile.sft import train_one

    recomputed = []
    checkpoint = modeling_utils.checkpoint

    def counting_checkpoint(*args, **kwargs):
        recomputed.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting_checkpoint)

    doc = _doc(
        tmp_path,
        compile_section={
            "sft": {
                "epochs": 1,
                "warmupRatio": 0,
                "batchSize": 4,
                "gradientAccumulation": 2,
                "maxLength": 128,
                "maxSteps": 2,
                "lora": {"dropout": 0.1},
            }
        },
    )
    traces = [
        {"question": f"What is {a} times {a + 3}?", "trace": f"{a} times {a + 3} is {a * (a + 3)}."}
        for a in range(2, 18)
    ]
    trained, layers_checkpointed = {}, {}
    for checkpointing in (False, True):
        recomputed.clear()
        files, train_log = train_one(doc, "flow-generated", traces, gradient_checkpointing=checkpointing)
        trained[checkpointing] = (load(files["adapter_model.safetensors"]), train_log["losses"])
        layers_checkpointed[checkpointing] = len(recomputed)
    assert layers_checkpointed[False] == 0 and layers_checkpointed[True] > 0  # it is on (also on a CPU)
    (plain, plain_losses), (checkpointed, checkpointed_losses) = trained[False], trained[True]
    assert len(plain_losses) == 2 and plain_losses == checkpointed_losses
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    assert all(torch.equal(plain[k], checkpointed[k]) for k in plain)
    # The steps did update the adapter (LoRA B starts at zero), so the comparison is not of two initialisations.
    assert any(k.endswith("lora_B.weight") and plain[k].abs().max() > 0 for k in plain)


@pytest.mark.slow
def test_interrupted_sft_resumes_to_the_same_adapter(tmp_path):
    """An SFT stopped after a checkpoint (a killed process, a preempted node) and run again continues from the
    checkpoint in storage and learns exactly what the uninterrupted SFT learns: same adapter bitwise, same losses
    (real SmolLM2; three steps across an epoch boundary, LoRA dropout, gradient accumulation). A checkpoint of
    other traces is not used, and the checkpoint is gone once the SFT is stored."""
    import torch
    from safetensors.torch import load

    from flowdpo.compile.sft import SFTCheckpoints, train_all, train_one
    from flowdpo.storage import RunLayout, open_store

    doc = _doc(
        tmp_path,
        compile_section={
            "sft": {
                "epochs": 2,
                "warmupRatio": 0,
                "batchSize": 4,
                "gradientAccumulation": 2,
                "maxLength": 128,
                "maxSteps": 3,
                "lora": {"dropout": 0.1},
            }
        },
    )
    store = open_store(doc.storage_uri())
    traces = [
        {"question": f"What is {a} times {a + 3}?", "trace": f"{a} times {a + 3} is {a * (a + 3)}."}
        for a in range(2, 18)
    ]
    whole_files, whole_log = train_one(doc, "flow-generated", traces)

    class Killed(Exception):
        pass

    class KilledAfterFirstCheckpoint(SFTCheckpoints):
        def save(self, folder, step):
            super().save(folder, step)
            raise Killed

    with pytest.raises(Killed):
        train_one(doc, "flow-generated", traces, checkpoints=KilledAfterFirstCheckpoint(store, "flow-generated", "fp", 0))
    prefix = RunLayout.sft_checkpoint("flow-generated")
    assert store.get_json(f"{prefix}/LATEST.json") == {"step": 1, "fingerprint": "fp"}
    assert SFTCheckpoints(store, "flow-generated", "other traces", 0).restore(tmp_path / "x") is None

    files, resumed_log = train_one(doc, "flow-generated", traces, checkpoints=SFTCheckpoints(store, "flow-generated", "fp", 0))
    assert resumed_log["resumedFromStep"] == 1 and whole_log["resumedFromStep"] is None
    assert resumed_log["steps"] == whole_log["steps"] == 3
    assert [h["loss"] for h in resumed_log["losses"]] == [h["loss"] for h in whole_log["losses"]]
    whole, resumed = load(whole_files["adapter_model.safetensors"]), load(files["adapter_model.safetensors"])
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    # the resumed SFT saved checkpoints of its own steps (every_seconds=0): only the newest folder is kept
    assert store.get_json(f"{prefix}/LATEST.json")["step"] == 2
    assert {k.split("/")[3] for k in store.list(prefix + "/") if not k.endswith("LATEST.json")} == {"step-000002"}

    # train_all removes the checkpoint once the adapter and its log are stored
    store.create_jsonl(RunLayout.compile_traces("ground-truth"), [{**t, "exampleId": f"q{i}"} for i, t in enumerate(traces)])
    stale = tmp_path / "stale-checkpoint"
    stale.mkdir()
    (stale / "trainer_state.json").write_text("{}")
    SFTCheckpoints(store, "ground-truth", "made from other traces", 0).save(stale, 1)
    assert store.list(RunLayout.sft_checkpoint("ground-truth") + "/")
    train_all(doc, store, sources=("ground-truth",))
    assert store.exists(RunLayout.sft_log("ground-truth"))
    assert store.list(RunLayout.sft_checkpoint("ground-truth") + "/") == []
