"""The learning experiment's scripts (docs/results/learning-experiment/): analyze.py's pre-registered decision
rule of its PLAN.md applied to intervals, the results page drawn from a results.json, the archive of the rows
it reads (so results survive the machine that computed them); figures.py's checks of the recorded numbers."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json

import pytest

from flowdpo.storage import RunLayout, open_store
from tests.support.paths import ROOT

_HERE = ROOT / "docs/results/learning-experiment"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


analyze = _load("analyze")
figures = _load("figures")


@pytest.mark.parametrize(
    ("primary", "control", "main_vs_control", "outcome"),
    [
        ([0.01, 0.06], [-0.02, 0.03], [0.01, 0.05], "H1"),
        ([0.01, 0.06], None, None, "H1"),
        ([0.01, 0.06], [0.01, 0.05], [0.001, 0.02], "H1"),  # the control improves, but the main run beats it
        ([0.01, 0.06], [0.01, 0.05], [-0.01, 0.02], "not-attributable"),
        ([-0.01, 0.04], [-0.02, 0.03], [-0.01, 0.05], "no-effect"),
        ([0.0, 0.04], None, None, "no-effect"),  # a lower end AT zero is not above it
        ([-0.06, -0.01], None, None, "worse"),
        (None, None, None, "missing"),
    ],
)
def test_decision_rule_of_the_plan(primary, control, main_vs_control, outcome):
    d = analyze.decide(primary, control, main_vs_control)
    assert d["outcome"] == outcome
    if outcome == "no-effect":
        assert f"{analyze.MDE_POINTS} points" in d["text"]


def _acc(k: int, n: int) -> dict:
    return {"answers": n, "questions": n // 4, "correct": k, "accuracy": k / n, "ci95WilsonAnswers": [k / n - 0.02, k / n + 0.02]}


def _diff(d: float, lo: float, hi: float) -> dict:
    return {"questions": 400, "samplesPerQuestion": 4, "difference": d, "ci95": [lo, hi]}


def test_results_page_states_the_estimate_the_interval_and_the_decision():
    ends = {"truncatedWithoutAnswer": 0.02, "endReasons": {"eos": 0.9, "max_chunks": 0.1}, "meanTokens": 140.0, "meanChunks": 2.5}
    result = {
        "primary": {**_diff(-0.004, -0.031, 0.022), "effect": False},
        "control": {
            "controlTrainedMinusUntrained": _diff(-0.02, -0.05, 0.01),
            "mainTrainedMinusControlTrained": _diff(0.016, -0.01, 0.04),
        },
        "accuracy": {
            "trainedFlow": _acc(480, 1600),
            "untrainedFlow": _acc(486, 1600),
            "controlTrainedFlow": _acc(379, 1600),
            "zeroShotSampled": _acc(600, 1600),
        },
        "secondary": {
            "untrainedFlowVsZeroShotSampled": _diff(-0.07, -0.1, -0.04),
            "trainedFlowVsZeroShotSampled": _diff(-0.075, -0.1, -0.05),
            "stopDiscrimination": {
                "partials": 900,
                "complete": 120,
                "untrained": {"auc": 0.61, "aucCi95": [0.55, 0.67], "meanPYesComplete": 0.4, "meanPYesIncomplete": 0.3},
                "trained": {"auc": 0.52, "aucCi95": [0.46, 0.58], "meanPYesComplete": 0.0, "meanPYesIncomplete": 0.0},
            },
            "ends": {"trained": ends, "untrained": ends, "control": ends},
            "compileTable": [
                {"row": "zero-shot", "label": "0-shot", "decoding": None, "accuracy": 0.4, "ci95": [0.35, 0.45], "correct": 160, "examples": 400},
                {"row": "sft-flow-generated", "label": "SFT, flow-generated", "decoding": None},
            ],
        },
        "sensitivityTodaysGrader": {**_diff(-0.004, -0.031, 0.022), "changedVerdicts": {"trained": {"wrongToRight": 0, "rightToWrong": 0}, "untrained": {"wrongToRight": 1, "rightToWrong": 0}}},
    }
    result["decision"] = analyze.decide(result["primary"]["ci95"], None, None)
    page = analyze.render(result)
    assert "**-0.4 points (-3.1 to +2.2)**" in page
    assert "no measurable effect at this scale" in page and result["decision"]["outcome"] == "no-effect"
    assert "| trained flow (final adapters) | 30.0% (28.0-32.0), 480/1600 |" in page
    assert "| trained | 0.520 (0.460-0.580) | 0.000 | 0.000 |" in page
    assert "| 0-shot | 40.0% (35.0-45.0) | 160/400 |" in page
    assert "| SFT, flow-generated | - | - |" in page  # a row not evaluated yet is shown as missing, not as 0
    assert "NOT pre-registered" in page


def _outcome_rows(n_questions: int, right_every: int) -> list[dict]:
    rows = []
    for q in range(n_questions):
        for k in range(4):
            right = (q + k) % right_every == 0
            answer = f"So the answer is {q if right else q + 1}."
            rows.append(
                {"exampleId": f"q{q}", "sample": k, "answer": answer, "gold": str(q), "correct": right,
                 "endReason": "eos", "extracted": str(q if right else q + 1), "tokens": 40, "chunks": 1,
                 "trace": ["a field the analysis does not read"]}
            )
    return rows


def _fill(store, rows_right_every: dict[str, int]) -> None:
    for row, every in rows_right_every.items():
        data = "".join(json.dumps(r) + "\n" for r in _outcome_rows(12, every)).encode()
        store.put(RunLayout.eval_outcomes(row, analyze.SET), data)
    store.put_json(RunLayout.eval_table_json, {"rows": [], "stopDiscrimination": None})
    store.put_json(f"{RunLayout.report_dir}/report.json", {"run": "r", "progressiveAccuracy": 0.5, "baselines": {}})


def test_an_archive_gives_the_same_results_as_the_runs_storage_and_keeps_only_what_is_read(tmp_path):
    main_store = open_store(f"file://{tmp_path / 'main'}")
    control_store = open_store(f"file://{tmp_path / 'control'}")
    _fill(main_store, {"flow-trained": 2, "flow-untrained": 3, "zero-shot-sampled": 2})
    _fill(control_store, {"flow-trained": 4})
    archive = tmp_path / "rows.json.gz"
    common = ["--main", str(tmp_path / "main"), "--control", str(tmp_path / "control")]
    assert analyze.main([*common, "--archive-to", str(archive), "--out", str(tmp_path / "from-store")]) == 0
    assert analyze.main(["--from-archive", str(archive), "--out", str(tmp_path / "from-archive")]) == 0

    from_store = json.loads((tmp_path / "from-store/results.json").read_text())
    assert json.loads((tmp_path / "from-archive/results.json").read_text()) == from_store
    assert (tmp_path / "from-archive/results.md").read_text() == (tmp_path / "from-store/results.md").read_text()
    # The synthetic rows differ (every 2nd vs every 3rd answer right), so the results are not trivially equal.
    assert from_store["accuracy"]["trainedFlow"]["correct"] != from_store["accuracy"]["untrainedFlow"]["correct"]

    doc = json.loads(gzip.decompress(archive.read_bytes()))
    kept = doc["runs"]["main"][RunLayout.eval_outcomes("flow-trained", analyze.SET)][0]
    assert "trace" not in kept and set(kept) <= set(analyze.OUTCOME_FIELDS)
    assert RunLayout.adapters_latest not in doc["runs"]["main"]  # absent in the run: absent in the archive


def test_an_archive_of_a_run_without_a_row_is_refused_and_a_damaged_archive_is_named(tmp_path):
    main_store = open_store(f"file://{tmp_path / 'main'}")
    control_store = open_store(f"file://{tmp_path / 'control'}")
    _fill(main_store, {"flow-trained": 2, "flow-untrained": 3})  # no zero-shot-sampled row
    _fill(control_store, {"flow-trained": 4})
    with pytest.raises(KeyError):
        analyze.write_archive(main_store, control_store, tmp_path / "rows.json.gz")
    assert not (tmp_path / "rows.json.gz").exists()

    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match="bad.json.gz: not an analysis archive"):
        analyze.main(["--from-archive", str(bad), "--out", str(tmp_path / "out")])
    for doc in (
        {"format": "something else"},
        [1, 2],
        {"format": "flowdpo-analysis-archive/1", "set": "heldout", "runs": {"main": {}}},  # no control run
    ):
        bad.write_bytes(gzip.compress(json.dumps(doc).encode()))
        with pytest.raises(SystemExit, match="not an analysis archive of the 'heldout' set"):
            analyze.main(["--from-archive", str(bad), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="missing.json.gz: not an analysis archive"):
        analyze.main(["--from-archive", str(tmp_path / "missing.json.gz"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _recorded() -> dict:
    return json.loads((_HERE / "recorded.json").read_text())


def test_the_recorded_numbers_agree_with_each_other():
    assert figures.check(_recorded()) == []


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (lambda r: r["heldout"]["rows"]["trainedFlow"].update(correct=770), "trainedFlow"),  # Wilson and primary disagree
        (lambda r: r["heldout"]["differences"][0].update(difference=0.21, ci95=[0.18, 0.24]), "primary"),
        (lambda r: r["compile"]["differences"][0].update(ci95=[0.06, 0.09]), "outside its interval"),
        (lambda r: r["ends"]["untrainedFlow"].update(stop=[839, 36]), "ends of untrainedFlow"),
        (lambda r: r["behaviourMain"][0].update(accuracy=0.59), "per-quarter"),
    ],
)
def test_a_transcription_error_in_the_recorded_numbers_is_caught(edit, names):
    rec = copy.deepcopy(_recorded())
    edit(rec)
    problems = figures.check(rec)
    assert problems and any(names in p for p in problems), problems


def test_figures_are_drawn_from_the_recorded_numbers(tmp_path):
    assert figures.main(["--out", str(tmp_path)]) == 0
    for name in ("results.png", "behaviour.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = copy.deepcopy(_recorded())
    rec["compile"]["rows"]["zeroShot"]["correct"] = 210
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rec))
    assert figures.main(["--recorded", str(bad), "--out", str(tmp_path / "none")]) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it as JSON"),  # no such file
        ("{not json", "cannot read it as JSON"),
        ("[1, 2]", "not a recorded-results file"),
        ('{"heldout": {}}', "not a recorded-results file"),
    ],
)
def test_a_bad_recorded_file_is_refused_with_its_name_and_nothing_is_drawn(tmp_path, capsys, content, message):
    path = tmp_path / "recorded.json"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    assert figures.main(["--recorded", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err
    assert list(out.iterdir()) == []
