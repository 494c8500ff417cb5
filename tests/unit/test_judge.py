"""The pairwise judge: verdict parsing, the both-orders rule against position bias, persistence and reuse.

The judge here is a scripted Python object with the ChatJudge interface (a real OpenAI-compatible endpoint is
exercised in test_vllm_backend.py::test_judge_client_on_a_real_vllm_server, where vLLM serves the model)."""

from __future__ import annotations

import json

import pytest

from flowdpo.cli.main import main
from flowdpo.compile.common import CompileError
from flowdpo.compile.judge import compare_sources, parse_verdict
from flowdpo.storage import RunLayout, open_store


@pytest.mark.parametrize(
    "reply, verdict",
    [("A", "A"), (" B.", "B"), ("Solution A", "A"), ("B is better", "B"), ("I think A", "A"), ("neither", None),
     ("", None), ("AB", None)],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


class ScriptedJudge:
    """Prefers the solution containing 'good'; `always_first` models a judge with pure position bias."""

    url, model = "scripted://judge", "scripted"

    def __init__(self, always_first: bool = False):
        self.always_first = always_first
        self.calls = 0

    def ask(self, question, a, b):
        self.calls += 1
        if "garbled" in a or "garbled" in b:
            return "I cannot decide"
        if self.always_first:
            return "A"
        return "A" if "good" in a else "B"


def _put_jsonl(store, key, rows):
    store.put(key, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _store(tmp_path, flow: list[str], selfgen: list[str]):
    store = open_store(f"file://{tmp_path}/run")
    for source, texts in (("flow-generated", flow), ("self-generated", selfgen)):
        rows = [
            {"exampleId": f"ex-{i}", "question": f"What is {i} + {i}?", "trace": t, "gold": str(2 * i), "source": source}
            for i, t in enumerate(texts)
        ]
        _put_jsonl(store, RunLayout.compile_traces(source), rows)
    return store


def test_both_orders_decide_wins_ties_and_invalid(tmp_path):
    store = _store(tmp_path, ["good 0", "plain 1", "good 2", "garbled 3"], ["plain 0", "good 1", "plain 2", "plain 3"])
    judge = ScriptedJudge()
    r = compare_sources(store, judge, "flow-generated", "self-generated")
    assert (r["winsA"], r["winsB"], r["ties"], r["invalid"], r["questions"]) == (2, 1, 0, 1, 4)
    assert judge.calls == 8  # every question in both orders
    assert r["winRateA"] == pytest.approx(2 / 3) and r["winRateA95"][0] < 2 / 3 < r["winRateA95"][1]
    assert [v["outcome"] for v in r["verdicts"]] == ["winsA", "winsB", "winsA", "invalid"]
    assert store.get_json(RunLayout.compile_judge("flow-generated", "self-generated"))["winsA"] == 2
    # Rerun with the same settings: reused, the judge is not asked again.
    again = compare_sources(store, judge, "flow-generated", "self-generated")
    assert judge.calls == 8 and again["verdicts"] == r["verdicts"]


def test_a_judge_with_position_bias_decides_nothing(tmp_path):
    store = _store(tmp_path, ["good 0", "good 1"], ["plain 0", "plain 1"])
    r = compare_sources(store, ScriptedJudge(always_first=True), "flow-generated", "self-generated")
    assert (r["winsA"], r["winsB"], r["ties"]) == (0, 0, 2) and r["winRateA"] is None


def test_sample_of_questions_and_clear_errors(tmp_path):
    store = _store(tmp_path, [f"good {i}" for i in range(10)], [f"plain {i}" for i in range(10)])
    r = compare_sources(store, ScriptedJudge(), "flow-generated", "self-generated", limit=3, seed=1)
    assert r["questions"] == 3 and r["winsA"] == 3
    with pytest.raises(CompileError, match="no traces of source 'ground-truth'"):
        compare_sources(store, ScriptedJudge(), "flow-generated", "ground-truth")
    with pytest.raises(CompileError, match="two different"):
        compare_sources(store, ScriptedJudge(), "self-generated", "self-generated")


def test_cli_judge_reports_an_unreachable_endpoint(tmp_path, tiny_run_file, capsys):
    run_file = tiny_run_file()
    from flowdpo.run.prepare import ensure_spec
    from flowdpo.spec import load_document

    doc = load_document(run_file)
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    _put_jsonl(store, RunLayout.compile_traces("flow-generated"), [{"exampleId": "e", "question": "q", "trace": "t"}])
    _put_jsonl(store, RunLayout.compile_traces("self-generated"), [{"exampleId": "e", "question": "q", "trace": "u"}])
    rc = main(["judge", str(run_file), "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"])
    assert rc == 2
    assert "judge endpoint http://127.0.0.1:9/v1 unreachable" in capsys.readouterr().err
