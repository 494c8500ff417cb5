"""The learning experiment's analysis script (docs/results/learning-experiment/analyze.py): the pre-registered
decision rule of its PLAN.md applied to intervals, and the results page drawn from a results.json."""

from __future__ import annotations

import importlib.util

import pytest

from tests.support.paths import ROOT

_spec = importlib.util.spec_from_file_location("analyze", ROOT / "docs/results/learning-experiment/analyze.py")
analyze = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(analyze)


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
