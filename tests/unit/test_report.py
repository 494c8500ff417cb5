"""flowdpo.report.run: progressive-accuracy figure + markdown/JSON summary from a run's store (no model)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from flowdpo.report.fmt import auc_text, pct, pp, verdict
from flowdpo.report.run import write_report
from flowdpo.report.stats import moving_accuracy, progressive_curve, wilson_interval
from flowdpo.storage import RunLayout, open_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SPEC = """\
apiVersion: flowdpo.dev/v1alpha1
kind: FlowDPORun
metadata:
  name: synth
spec:
  model:
    name: builtin:smollm2-135m-instruct
"""


def _row(
    shard: int, i: int, correct: bool, untrained: bool | None = None, zero: bool | None = None, v: int = 0
):
    baselines = {}
    if untrained is not None:
        baselines["untrainedFlow"] = untrained
    if zero is not None:
        baselines["zeroShot"] = zero
    return {
        "exampleId": f"s{shard}-{i}",
        "source": "chain_sum" if i % 2 == 0 else "products",
        "question": "1+1?",
        "gold": "2",
        "answer": "2" if correct else "3",
        "correct": correct,
        "extracted": "2" if correct else "3",
        "chunks": 1,
        "endReason": "stop",
        "tokens": 5,
        "rollouts": 2,
        "rolloutsCorrect": 1,
        "pairs": {"answer": 1, "stop": 0},
        "adapterVersions": {"answer": v, "stop": 0},
        "baselines": baselines,
    }


def _progress(examples: int, correct: int) -> dict:
    return {
        "run": "synth",
        "phase": "Succeeded",
        "updatedAt": "2026-01-01T00:00:00+00:00",
        "examples": examples,
        "examplesTotal": examples,
        "correct": correct,
        "progressiveAccuracy": correct / examples,
        "baselines": {},
        "pairs": {"answer": {"mined": 12, "trained": 8}, "stop": {"mined": 0, "trained": 0}},
        "adapterVersions": {"answer": 2, "stop": 0},
        "trainerSteps": {"answer": 2, "stop": 0},
        "last": {"answer": {"loss": 0.6123, "margin": 0.25, "accuracy": 0.75}},
        "shards": {"total": 3, "consumed": 3},
        "elapsedSeconds": 360.0,
        "examplesPerHour": 120.0,
        "etaSeconds": 0.0,
    }


def _write_run(store, shards: dict[int, list[dict]], consumed: list[int], progress: dict | None = None):
    store.put(RunLayout.spec, SPEC.encode())
    for s, rows in shards.items():
        store.create_jsonl(RunLayout.results(s), rows)
    key = f"trainer/state/{len(consumed):06d}.json"
    store.put_json(key, {"consumed": consumed, "versions": {"answer": 2, "stop": 0}, "finished": True})
    store.put_json(RunLayout.trainer_latest, {"key": key})
    if progress is not None:
        store.put_json(RunLayout.progress, progress)


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "run"
    store = open_store(f"file://{root}")
    # shard 2 is consumed before shard 0: all of shard 2 correct, shard 0 all wrong, shard 1 mixed.
    shards = {
        0: [_row(0, i, False, untrained=False, zero=(i == 0), v=1) for i in range(4)],
        1: [_row(1, i, i < 3, untrained=(i == 0), zero=True, v=2) for i in range(4)],
        2: [_row(2, i, True, untrained=(i < 2), v=0) for i in range(4)],
    }
    consumed = [2, 0, 1]
    _write_run(store, shards, consumed, _progress(12, 7))
    return store, root, shards, consumed


def test_progressive_curve_hand_example():
    got = progressive_curve([True, False, True, True])
    assert got == pytest.approx([1.0, 0.5, 2 / 3, 0.75])
    assert progressive_curve([]) == []


def test_moving_accuracy():
    assert moving_accuracy([True, False, True, True], 2) == pytest.approx([1.0, 0.5, 0.5, 1.0])


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)



@pytest.mark.parametrize("n", [1, 7, 10, 14, 100, 1000])
def test_wilson_interval_contains_p_exactly_at_the_ends(n):
    """k = n must give an upper bound of exactly 1 (0.9999999999999999 made an error bar negative and the
    signal check's figure crash), and every interval contains its p."""
    assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
    for k in range(n + 1):
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_write_report_files_in_store_and_local(run, tmp_path):
    store = run[0]
    out = tmp_path / "out"
    paths = write_report(store, out_dir=out)
    assert set(paths) == {"markdown", "figure", "json", "behaviourFigure"}
    for p in paths.values():
        assert p.startswith(str(out.resolve()))
    for name in ("progress.png", "report.md", "report.json"):
        assert store.exists(f"{RunLayout.report_dir}/{name}")
        assert (out / name).stat().st_size > 0
    png = (out / "progress.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000
    assert store.get("report/progress.png") == png

    md = (out / "report.md").read_text()
    k, n = 7, 12  # 4 (shard 2) + 0 (shard 0) + 3 (shard 1)
    lo, hi = wilson_interval(k, n)
    assert "synth" in md and "Succeeded" in md
    assert f"{100 * k / n:.1f}% ({k}/{n}; 95% CI {100 * lo:.1f}%-{100 * hi:.1f}%)" in md
    assert "](progress.png)" in md
    assert "**12**" in md
    assert "chain_sum" in md and "products" in md

    js = json.loads((out / "report.json").read_text())
    assert js["examples"] == 12
    assert js["progressiveAccuracy"]["accuracy"] == pytest.approx(k / n)
    assert js["progressiveAccuracy"]["ci95"] == pytest.approx([lo, hi])
    # untrained flow on all 12 examples: shard 2 -> 2, shard 0 -> 0, shard 1 -> 1
    ut = js["baselines"]["untrainedFlow"]
    assert (ut["correct"], ut["examples"]) == (3, 12)
    assert ut["pairedDifference"]["difference"] == pytest.approx((7 - 3) / 12)
    # zero-shot only on shards 0 and 1 (8 examples): trained got 3 of those, zero-shot 5
    zs = js["baselines"]["zeroShot"]
    assert (zs["correct"], zs["examples"]) == (5, 8)
    assert zs["trainedOnSameExamples"]["correct"] == 3
    # The untrained flow against one pass, on the 8 examples that have both: untrained 1 (shard 1, i=0), single
    # pass 5 (shard 0 i=0, shard 1 all four).
    d = js["untrainedFlowVsZeroShot"]
    assert d["examples"] == 8 and d["difference"] == pytest.approx((1 - 5) / 8)
    assert "Untrained flow vs zero-shot single model" in md
    assert js["pairs"]["answer"] == {"mined": 12, "trained": 8}
    assert js["examplesPerHour"] == 120.0


def test_consumed_order_is_respected(run, tmp_path):
    store = run[0]
    write_report(store, out_dir=tmp_path / "o")
    js = json.loads((tmp_path / "o" / "report.json").read_text())
    # consumed [2, 0, 1]: first quarter (3 examples) comes from shard 2 (all correct), last quarter from
    # shard 1's rows 1..3 (True, True, False).
    q = js["quarters"]
    assert q["size"] == 3
    assert q["first"]["trained"]["correct"] == 3
    assert q["last"]["trained"]["correct"] == 2
    # in shard index order the first quarter would be shard 0 (all wrong): a different answer
    assert js["order"].startswith("trainer consumption order")


def test_only_consumed_shards_are_counted(tmp_path):
    store = open_store(f"file://{tmp_path / 'r'}")
    shards = {0: [_row(0, i, True) for i in range(4)], 1: [_row(1, i, False) for i in range(4)]}
    _write_run(store, shards, consumed=[0], progress=None)
    paths = write_report(store, out_dir=tmp_path / "o")
    js = json.loads(Path(paths["json"]).read_text())
    assert js["examples"] == 4 and js["progressiveAccuracy"]["accuracy"] == 1.0
    assert js["shards"]["resultsNotYetConsumed"] == [1]
    md = Path(paths["markdown"]).read_text()
    assert "1 shard(s) with results the trainer has not consumed yet" in md
    assert "No baselines" in md


def test_default_local_folder_is_run_folder(run):
    store, root, *_ = run
    paths = write_report(store)
    assert paths["markdown"] == str(root.resolve() / "report" / "report.md")
    assert (root / "report" / "progress.png").read_bytes().startswith(PNG_MAGIC)


def test_empty_store_is_a_clear_error(tmp_path):
    store = open_store(f"file://{tmp_path / 'empty'}")
    with pytest.raises(ValueError, match="no results"):
        write_report(store, out_dir=tmp_path / "o")


def test_nothing_consumed_yet_is_a_clear_error(tmp_path):
    store = open_store(f"file://{tmp_path / 'r'}")
    _write_run(store, {0: [_row(0, 0, True)]}, consumed=[], progress=None)
    with pytest.raises(ValueError, match="consume"):
        write_report(store, out_dir=tmp_path / "o")


def test_large_run_renders(tmp_path):
    """A few hundred examples with adapter updates: the figure and numbers stay consistent."""
    store = open_store(f"file://{tmp_path / 'big'}")
    shards = {}
    for s in range(40):
        p = 0.3 + 0.5 * s / 40
        shards[s] = [
            _row(
                s,
                i,
                (s * 8 + i) % 100 < 100 * p,
                untrained=(s * 8 + i) % 10 < 3,
                zero=(s * 8 + i) % 10 < 4,
                v=s // 4,
            )
            for i in range(8)
        ]
    _write_run(store, shards, consumed=list(range(40)), progress=None)
    paths = write_report(store, out_dir=tmp_path / "o")
    js = json.loads(Path(paths["json"]).read_text())
    assert js["examples"] == 320
    assert js["movingWindow"] == 32
    assert js["adapterVersionChanges"]["answer"] == 9
    assert not math.isnan(js["progressiveAccuracy"]["accuracy"])


def _write_eval(store, outcomes: dict[str, list[bool]]) -> None:
    """An evaluated run as `flowdpo eval` leaves it: eval/table.json + per-question outcomes per row."""
    from flowdpo.compile.eval_table import ROW_LABELS, cell

    rows = []
    for row, correct in outcomes.items():
        recs = [{"question": f"q{i}", "correct": c} for i, c in enumerate(correct)]
        store.put(RunLayout.eval_outcomes(row, "heldout"), "".join(json.dumps(r) + "\n" for r in recs).encode())
        entry = {"row": row, "label": ROW_LABELS[row], "results": {"heldout": cell(recs)}}
        if row != "zero-shot":
            src = row.removeprefix("sft-")
            entry["sftLog"] = RunLayout.sft_log(src)
            store.put_json(RunLayout.sft_log(src), {"steps": 6, "trainLoss": 0.5, "seconds": 9.0, "traces": 20})
        rows.append(entry)
    store.put_json(
        RunLayout.compile_manifest,
        {"compileQuestions": 40, "tracesPerSource": 20, "sources": {"flow-generated": {"questionsSolved": 25}}},
    )
    n = len(next(iter(outcomes.values())))
    store.put_json(
        RunLayout.eval_table_json,
        {
            "run": "synth", "model": "tiny", "temperature": 0.0, "tracesPerSource": 20,
            "sets": [{"id": "heldout", "title": "held-out tasks", "questions": n}], "rows": rows,
        },
    )


def test_report_carries_the_compile_table_with_paired_comparisons(run, tmp_path):
    store = run[0]
    assert "compileFigure" not in write_report(store, out_dir=tmp_path / "before")
    assert json.loads((tmp_path / "before" / "report.json").read_text())["compile"] is None
    # 10 questions: flow-SFT right on 0-5, self-generated on 0-2 and 9, ground truth on 0-5, 0-shot on 0-1.
    _write_eval(
        store,
        {
            "zero-shot": [i < 2 for i in range(10)],
            "sft-ground-truth": [i < 6 for i in range(10)],
            "sft-self-generated": [i < 3 or i == 9 for i in range(10)],
            "sft-flow-generated": [i < 6 for i in range(10)],
        },
    )
    out = tmp_path / "after"
    paths = write_report(store, out_dir=out)
    assert Path(paths["compileFigure"]).read_bytes().startswith(PNG_MAGIC)
    assert store.exists(f"{RunLayout.report_dir}/compile.png")
    js = json.loads((out / "report.json").read_text())["compile"]
    assert [r["row"] for r in js["rows"]] == ["zero-shot", "sft-ground-truth", "sft-self-generated", "sft-flow-generated"]
    vs = {d["second"]: d for d in js["pairedVsFlow"]}
    assert set(vs) == {"zero-shot", "sft-ground-truth", "sft-self-generated"}
    # flow 6/10 vs self-generated 4/10 on the same questions: only-flow on q3,q4,q5, only-self on q9.
    assert vs["sft-self-generated"]["difference"] == pytest.approx(0.2)
    assert (vs["sft-self-generated"]["onlyFirstCorrect"], vs["sft-self-generated"]["onlySecondCorrect"]) == (3, 1)
    assert vs["sft-ground-truth"]["difference"] == 0 and vs["zero-shot"]["difference"] == pytest.approx(0.4)
    md = (out / "report.md").read_text()
    assert "## Compile table" in md and "](compile.png)" in md
    lo, hi = wilson_interval(6, 10)
    assert f"60.0% (6/10; 95% CI {100 * lo:.1f}%-{100 * hi:.1f}%)" in md
    assert "SFT (flow-generated) vs SFT (self-generated): +20.0 pp" in md
    # The compile table reads its intervals with the same words as every other report section (report/fmt.py).
    line = next(x for x in md.splitlines() if "SFT (flow-generated) vs 0-shot" in x)
    ci = vs["zero-shot"]["ci95"]
    assert ci[0] > 0 and line.endswith(": " + verdict(ci) + ".") and "excludes zero" in line


@pytest.mark.parametrize(
    ("ci", "words"),
    [
        ([0.01, 0.2], "the first is better (the 95% CI excludes zero)"),
        ([-0.2, -0.01], "the first is worse (the 95% CI excludes zero)"),
        ([-0.1, 0.1], "no measurable difference at this sample size (the 95% CI includes zero)"),
        ([0.0, 0.1], "no measurable difference at this sample size (the 95% CI includes zero)"),
        (None, "no interval (too few questions)"),
    ],
)
def test_one_verdict_wording_follows_the_interval(ci, words):
    assert verdict(ci) == words


def test_number_formats():
    assert (pct(0.5324), pct(None), pp(0.23), pp(-0.052)) == ("53.2%", "-", "+23.0 pp", "-5.2 pp")
    assert auc_text({"auc": 0.71234, "aucCi95": [0.65, 0.77]}) == "0.712 (0.650-0.770)"
    assert auc_text({"auc": 0.5}) == "0.500" and auc_text({"auc": None}) == "-" and auc_text(None) == "-"


def test_flow_behaviour_by_quarter():
    from flowdpo.report.numbers import flow_behaviour

    def row(end, extracted, p_stop, correct=False):
        return {"endReason": end, "extracted": extracted, "pStop": p_stop, "chunks": len(p_stop) + 1,
                "correct": correct, "rollouts": 2, "rolloutsCorrect": int(correct)}

    # Early stops without an answer in the first half; full-length answers with one in the second.
    rows = [row("stop", None, [0.9])] * 4 + [row("max_chunks", "7", [0.1, 0.2, 0.3], correct=True)] * 4
    q = flow_behaviour(rows)
    assert [b["examples"] for b in q] == [2, 2, 2, 2]
    assert q[0]["noFinalAnswer"] == 1.0 and q[3]["noFinalAnswer"] == 0.0
    assert q[0]["ends"]["stop"] == 1.0 and q[3]["ends"]["max_chunks"] == 1.0
    assert q[0]["meanStopProbability"] == pytest.approx(0.9) and q[3]["meanStopProbability"] == pytest.approx(0.2)
    assert q[0]["meanChunks"] == 2 and q[3]["meanChunks"] == 4 and q[3]["accuracy"] == 1.0
    assert q[3]["rolloutsCorrect"] == 0.5
    assert flow_behaviour(rows[:3]) == []


def test_flow_behaviour_counts_answers_that_ended_with_eos():
    from flowdpo.report.numbers import flow_behaviour

    rows = [{"endReason": "eos", "chunks": 1, "correct": True}] * 3 + [{"endReason": "stop", "chunks": 2}]
    q = flow_behaviour(rows * 2)
    assert sum(b["ends"]["eos"] for b in q) == pytest.approx(4 * 0.75)
    assert all(sum(b["ends"].values()) == pytest.approx(1.0) for b in q)


def test_token_budget_from_the_zero_shot_answers():
    """The zero-shot pass has the flow's budget and no Stop LLM: EOS endings fit, the rest ran out; lengths are
    censored at the budget (a percentile beyond the share that fit is unknown, not the budget)."""
    from flowdpo.report.numbers import token_budget

    spec = {"spec": {"flow": {"chunkTokens": 8, "maxChunks": 2}}}

    def row(tokens, end):
        return {"baselineDetails": {"zeroShot": {"tokens": tokens, "endReason": end, "extracted": None}}}

    rows = [row(t, "eos") for t in (3, 5, 7, 9, 11, 12, 13, 14, 15)] + [row(16, "max_chunks")]
    tb = token_budget(rows, spec)
    assert tb["budgetTokens"] == 16 and tb["answers"] == 10
    assert tb["fit"]["correct"] == 9 and tb["fit"]["accuracy"] == pytest.approx(0.9)
    assert tb["p50"] == 11 and tb["p90"] == 15
    rows += [row(16, "max_chunks")] * 2  # now 9 of 12 fit: the p90 is past the budget
    tb = token_budget(rows, spec)
    assert tb["p90"] is None and tb["p50"] == 12
    assert token_budget([{"baselines": {}}], spec) is None
    # Omitted flow fields take the spec's defaults (the paper's 160 x 6).
    assert token_budget(rows, {"spec": {}})["budgetTokens"] == 160 * 6


def test_report_shows_the_token_budget(tmp_path):
    store = open_store(f"file://{tmp_path / 'run'}")
    rows = [_row(0, i, i < 2, untrained=False, zero=True) for i in range(4)]
    for i, r in enumerate(rows):
        r["baselineDetails"] = {"zeroShot": {"tokens": 40 + i, "endReason": "eos" if i < 3 else "max_chunks"}}
    _write_run(store, {0: rows}, [0], _progress(4, 2))
    write_report(store, out_dir=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    # SPEC omits the flow: the paper's budget, 160 x 6 tokens.
    assert "Token budget: 3 of 4 zero-shot answers (75.0%" in md and "budget of 960 tokens" in md
    assert "p50 41, p90 > 960 tokens" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text())["tokenBudget"]["fit"]["correct"] == 3


# -- held-out endpoints (flow rows of `flowdpo eval`) ------------------------------------------------
def _write_flow_eval(store, *, with_scores: bool = True) -> dict:
    """An evaluated run with the flow rows: 6 questions x 2 samples for the trained and untrained flow and one
    pass sampled like them, and the Stop discrimination as `flowdpo eval` stores it."""
    from flowdpo.compile.eval_table import ROW_LABELS, cell

    # trained right on q0-q3 (both samples), untrained on q0 (both) and q1 (one sample), one pass on q0-q2.
    right = {
        "flow-trained": lambda q, s: q < 4,
        "flow-untrained": lambda q, s: q == 0 or (q == 1 and s == 0),
        "zero-shot-sampled": lambda q, s: q < 3,
    }
    ends = {  # (endReason, extracted) per question, the same for both samples
        "flow-trained": lambda q: ("eos", "1") if q < 5 else ("max_chunks", None),
        "flow-untrained": lambda q: ("stop", None) if q >= 3 else ("eos", "1"),
        "zero-shot-sampled": lambda q: (None, "1"),  # an older one-pass record: no end reason, tokens tell
    }
    rows = []
    for row, ok in right.items():
        recs = []
        for q in range(6):
            for s in range(2):
                reason, extracted = ends[row](q)
                rec = {"question": f"q{q}", "exampleId": f"e{q}", "sample": s, "correct": ok(q, s),
                       "extracted": extracted, "tokens": 64 if q == 5 else 20}
                if reason is not None:
                    rec["endReason"] = reason
                recs.append(rec)
        store.put(RunLayout.eval_outcomes(row, "heldout"), "".join(json.dumps(r) + "\n" for r in recs).encode())
        rows.append({"row": row, "label": ROW_LABELS[row], "results": {"heldout": cell(recs, 2)}})
    stop = {
        "partials": 6, "complete": 3,
        "untrained": {"auc": 0.5, "aucCi95": [0.1, 0.9], "meanPYesComplete": 0.4, "meanPYesIncomplete": 0.4},
        "trained": {"auc": 1.0, "aucCi95": [1.0, 1.0], "meanPYesComplete": 0.8, "meanPYesIncomplete": 0.1},
    }
    stored = dict(stop, fingerprint="x")
    if with_scores:
        stored["scores"] = {
            "complete": [True, True, True, False, False, False],
            "untrained": [0.4, 0.6, 0.2, 0.4, 0.6, 0.2],
            "trained": [0.9, 0.8, 0.7, 0.2, 0.1, 0.0],
        }
    store.put_json(RunLayout.eval_stop, stored)
    store.put_json(
        RunLayout.eval_table_json,
        {"run": "synth", "model": "tiny", "temperature": 0.0, "maxNewTokens": 64, "tracesPerSource": None,
         "sets": [{"id": "heldout", "title": "held-out tasks", "questions": 6}], "rows": rows,
         "stopDiscrimination": stop},
    )
    return stop


def test_report_opens_with_the_held_out_endpoints(run, tmp_path):
    from flowdpo.report.stats import clustered_bootstrap_difference

    store = run[0]
    _write_flow_eval(store)
    out = tmp_path / "out"
    paths = write_report(store, out_dir=out)
    assert Path(paths["endpointsFigure"]).read_bytes().startswith(PNG_MAGIC)
    assert store.exists(f"{RunLayout.report_dir}/endpoints.png")
    e = json.loads((out / "report.json").read_text())["endpoints"]
    # Primary: trained minus untrained, per question: q0 0, q1 1-0.5, q2 1, q3 1, q4 0, q5 0 -> 2.5/6.
    p = e["primary"]
    assert (p["first"], p["second"]) == ("flow-trained", "flow-untrained")
    assert p["difference"] == pytest.approx(2.5 / 6)
    want = clustered_bootstrap_difference(
        [[q < 4] * 2 for q in range(6)], [[q == 0, q in (0, 1)] for q in range(6)]
    )
    assert p["ci95"] == pytest.approx(want["ci95"]) and p["ci95"][0] > 0
    assert "first is better" in p["verdict"]
    rows = e["sets"][0]["rows"]
    # Trained: 5 questions end by EOS, q5 runs out of budget without a final answer.
    assert rows["flow-trained"]["ends"]["eos"] == pytest.approx(5 / 6)
    assert rows["flow-trained"]["ends"]["budgetTruncated"] == pytest.approx(1 / 6)
    assert rows["flow-untrained"]["ends"]["stop"] == pytest.approx(0.5)
    # One pass without end reasons: q5 used the whole 64-token budget (with an answer), the rest ended.
    assert rows["zero-shot-sampled"]["ends"]["budgetAnswered"] == pytest.approx(1 / 6)
    assert rows["zero-shot-sampled"]["ends"]["eos"] == pytest.approx(5 / 6)
    # The ROC curves come from the stored scores; their area is the stored AUC (ties counted half).
    for name, auc_value in (("untrained", 0.5), ("trained", 1.0)):
        roc = e["stop"][name]["roc"]
        assert roc[0] == [0.0, 0.0] and roc[-1] == [1.0, 1.0]
        area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(roc))
        assert area == pytest.approx(auc_value)
    md = (out / "report.md").read_text()
    assert md.index("## Held-out evaluation") < md.index("](progress.png)")
    assert "**Trained flow minus untrained flow** on `heldout`: **+41.7 pp" in md
    assert "6 questions x 2 samples, bootstrap clustered by question" in md
    assert "| trained | 1.000 (1.000-1.000) | 0.800 / 0.100 |" in md


def test_endpoints_without_stop_scores_or_without_the_untrained_flow(run, tmp_path):
    store = run[0]
    _write_flow_eval(store, with_scores=False)
    write_report(store, out_dir=tmp_path / "a")
    e = json.loads((tmp_path / "a" / "report.json").read_text())["endpoints"]
    assert "roc" not in e["stop"]["trained"] and e["stop"]["trained"]["auc"] == 1.0
    assert (tmp_path / "a" / "endpoints.png").read_bytes().startswith(PNG_MAGIC)
    # Only the trained flow evaluated (a control run's `--rows flow-trained`): no primary, said so.
    table = store.get_json(RunLayout.eval_table_json)
    table["rows"] = [r for r in table["rows"] if r["row"] == "flow-trained"]
    table.pop("stopDiscrimination")
    store.put_json(RunLayout.eval_table_json, table)
    store.delete(RunLayout.eval_stop)
    write_report(store, out_dir=tmp_path / "b")
    e = json.loads((tmp_path / "b" / "report.json").read_text())["endpoints"]
    assert e["primary"] is None and e["stop"] is None and list(e["sets"][0]["rows"]) == ["flow-trained"]
    assert "no trained-vs-untrained comparison" in (tmp_path / "b" / "report.md").read_text()


@pytest.mark.parametrize(
    "damage",
    [
        {"trained": ["a", None, {}, 1, 2, 3]},  # not probabilities
        {"trained": [0.5, 0.5]},  # another length than the labels
        {"complete": "yes"},  # labels not a list of booleans
    ],
)
def test_damaged_stop_scores_lose_their_curve_not_the_report(run, tmp_path, damage):
    store = run[0]
    _write_flow_eval(store)
    stored = store.get_json(RunLayout.eval_stop)
    stored["scores"].update(damage)
    store.put_json(RunLayout.eval_stop, stored)
    write_report(store, out_dir=tmp_path)
    stop = json.loads((tmp_path / "report.json").read_text())["endpoints"]["stop"]
    assert "roc" not in stop["trained"] and stop["trained"]["auc"] == 1.0
    assert ("roc" in stop["untrained"]) == ("complete" not in damage)


CELL = {"examples": 12, "correct": 8, "accuracy": 0.6, "ci95": [0.3, 0.8]}


@pytest.mark.parametrize(
    "table, problem",
    [
        ([], "not a JSON object"),
        ({"rows": "x", "sets": 3}, "'sets' is not a list"),
        ({"rows": [{"row": "flow-trained"}], "sets": []}, "'rows' is not a list of rows"),
        ({"rows": [{"row": "flow-trained", "results": {"heldout": {"examples": "x"}}}], "sets": [{"id": "heldout"}]},
         "a row's result is not a cell"),
    ],
)
def test_a_damaged_eval_table_is_named_with_what_is_wrong(run, tmp_path, table, problem):
    from flowdpo.storage.store import CorruptObjectError

    store = run[0]
    _write_flow_eval(store)
    store.put_json(RunLayout.eval_table_json, table)
    with pytest.raises(CorruptObjectError, match=problem) as e:
        write_report(store, out_dir=tmp_path)
    assert "eval/table.json" in str(e.value)


def test_odd_stop_numbers_are_left_out_of_the_report(run, tmp_path):
    """A table in the right shape with Stop numbers that are not numbers: shown as '-', the report is written."""
    store = run[0]
    _write_flow_eval(store)
    table = store.get_json(RunLayout.eval_table_json)
    table["stopDiscrimination"] = {"partials": 6, "complete": 3, "untrained": {"auc": "x", "aucCi95": "y"}}
    store.put_json(RunLayout.eval_table_json, table)
    write_report(store, out_dir=tmp_path)
    stop = json.loads((tmp_path / "report.json").read_text())["endpoints"]["stop"]
    assert stop["untrained"]["auc"] is None and stop["untrained"]["aucCi95"] is None
    assert "| untrained | - |" in (tmp_path / "report.md").read_text()


def test_behaviour_figure_from_four_examples_on(run, tmp_path):
    paths = write_report(run[0], out_dir=tmp_path)
    assert Path(paths["behaviourFigure"]).read_bytes().startswith(PNG_MAGIC)
    assert "](behaviour.png)" in (tmp_path / "report.md").read_text()


def test_roc_curve_hand_example_ties_and_thinning():
    from flowdpo.report.stats import auc, roc_curve

    assert roc_curve([0.9, 0.5], [0.5, 0.1]) == [(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]
    assert roc_curve([], [0.1]) is None and roc_curve([0.1], []) is None
    import random

    rng = random.Random(3)
    pos = [rng.random() + 0.3 for _ in range(500)]
    neg = [rng.random() for _ in range(700)]
    full = roc_curve(pos, neg, max_points=10_000)
    assert len(full) == 1201
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(full))
    assert area == pytest.approx(auc(pos, neg))
    thin = roc_curve(pos, neg, max_points=50)
    assert len(thin) == 50 and thin[0] == (0.0, 0.0) and thin[-1] == (1.0, 1.0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(thin))
