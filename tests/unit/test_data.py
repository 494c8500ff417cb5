"""Data loaders on local fixtures in the real hub schemas, and reasoning-gym generation (real library)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from flowdpo.data import Example, LoadReport, load_examples, load_heldout_examples
from flowdpo.spec import DataSpec, ReasoningGymTask
from tests.support.paths import FIXTURES

GSM8K = str(FIXTURES / "gsm8k_sample.jsonl")
MATH = str(FIXTURES / "math_sample.jsonl")
METAMATH = str(FIXTURES / "metamathqa_sample.parquet")


def _by_question(examples: list[Example]) -> dict[str, Example]:
    return {ex.question: ex for ex in examples}


# ---------------------------------------------------------------- hub schemas from local files


def test_gsm8k_fixture() -> None:
    examples, report = load_examples(DataSpec(source="gsm8k", path=GSM8K))
    assert report.loaded == len(examples) == 5
    assert report.skipped == {
        "no final answer (#### N) in answer": 1,
        "missing field 'question'": 1,
        "non-string field 'question'": 1,
        "malformed JSON line": 1,
    }
    answers = sorted(ex.answer for ex in examples)
    assert answers == sorted(["36", "1234", "7.5", "8", "240"])  # "#### 1,234" -> "1234"
    books = next(ex for ex in examples if ex.answer == "1234")
    assert books.source == "gsm8k"
    assert books.id == "gsm8k-train-000001"  # the row's position, not its rank after skipping
    assert books.solution is not None and "<<" not in books.solution and "#### 1,234" in books.solution
    assert "skipped 4" in report.summary()


def test_math_fixture() -> None:
    examples, report = load_examples(DataSpec(source="math", path=MATH))
    assert report.loaded == 5
    assert report.skipped == {"no final answer (\\boxed{...}) in solution": 1, "empty field 'problem'": 1}
    answers = {ex.question: ex.answer for ex in examples}
    assert answers["What is $\\frac{1}{4} + \\frac{1}{4}$?"] == "\\frac{1}{2}"  # nested braces
    assert answers["Simplify $\\sqrt{12}$."] == "2\\sqrt{3}"
    assert answers["What is the remainder when $100$ is divided by $7$?"] == "2"  # \fbox
    last_box = next(a for q, a in answers.items() if q.startswith("Compute"))
    assert last_box == "\\frac{5}{8}"  # the LAST box, not the intermediate one
    assert all(
        ex.solution is not None and ("\\boxed" in ex.solution or "\\fbox" in ex.solution) for ex in examples
    )


def test_metamathqa_fixture() -> None:
    examples, report = load_examples(DataSpec(source="metamathqa", path=METAMATH))
    assert report.loaded == 4
    assert report.skipped == {
        "no final answer (The answer is: X) in response": 1,
        "missing field 'response'": 1,
    }
    assert sorted(ex.answer for ex in examples) == sorted(["24", "\\frac{3}{4}", "1250", "10"])
    assert all(ex.solution is not None and "The answer is:" in ex.solution for ex in examples)


@pytest.mark.parametrize(
    ("source", "path", "loaded", "schema_answer"),
    [("jsonl", GSM8K, 5, "1234"), ("jsonl", MATH, 5, "\\frac{1}{2}"), ("parquet", METAMATH, 4, "1250")],
)
def test_schema_auto_detection(source: str, path: str, loaded: int, schema_answer: str) -> None:
    examples, report = load_examples(DataSpec(source=source, path=path))
    assert report.loaded == loaded
    assert schema_answer in {ex.answer for ex in examples}
    assert all(ex.source == Path(path).stem for ex in examples)


def test_explicit_fields_generic_answers(tmp_path: Path) -> None:
    f = tmp_path / "custom.jsonl"
    rows = [
        {"prompt": "What is 6 * 7?", "target": 42},
        {"prompt": "Half of 1?", "target": "\\frac{1}{2}"},
        {"prompt": "Sum 2 and 3.", "target": "2 + 3 = 5\n#### 5"},
        {"prompt": "Long?", "target": "This is a long sentence with no final answer in it at all."},
        {"prompt": "", "target": "1"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    spec = DataSpec(source="jsonl", path=str(f), question_field="prompt", answer_field="target")
    examples, report = load_examples(spec)
    assert {ex.question: ex.answer for ex in examples} == {
        "What is 6 * 7?": "42",
        "Half of 1?": "\\frac{1}{2}",
        "Sum 2 and 3.": "5",
    }
    assert report.skipped == {"no final answer in 'target'": 1, "empty field 'prompt'": 1}


def test_undetectable_schema(tmp_path: Path) -> None:
    f = tmp_path / "odd.jsonl"
    f.write_text(json.dumps({"x": "a", "y": "b"}) + "\n")
    with pytest.raises(ValueError, match="questionField"):
        load_examples(DataSpec(source="jsonl", path=str(f)))


def _rows_file(tmp_path: Path, raw: bytes) -> DataSpec:
    f = tmp_path / "rows.jsonl"
    f.write_bytes(raw)
    return DataSpec(source="jsonl", path=str(f), num_examples=10)


def _row(i: int, answer: object = None) -> bytes:
    return json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}" if answer is None else answer}).encode()


def test_file_encodings_and_line_breaks_lose_no_row(tmp_path: Path) -> None:
    """A byte-order mark, CRLF line ends and a raw U+2028 inside a JSON string are all one row per line."""
    inner = json.dumps({"question": "Line one\u2028line two: what is 2 + 2?", "answer": "#### 4"}, ensure_ascii=False)
    raw = b"\xef\xbb\xbf" + _row(1) + b"\r\n" + _row(2) + b"\r\n" + inner.encode() + b"\n"
    examples, report = load_examples(_rows_file(tmp_path, raw))
    assert report.skipped == {} and sorted(ex.answer for ex in examples) == ["2", "3", "4"]


def test_numeric_answers_are_the_final_answer_in_every_schema(tmp_path: Path) -> None:
    raw = b"\n".join([_row(1, 2), _row(2, 3.5), _row(3, True), b'{"question": "q", "answer": NaN}'])
    examples, report = load_examples(_rows_file(tmp_path, raw))
    assert sorted(ex.answer for ex in examples) == ["2", "3.5"]
    assert all(ex.solution is None for ex in examples)
    assert report.skipped == {"non-string field 'answer'": 1, "non-finite gold answer": 1}


def test_skipped_rows_say_where_the_first_one_is(tmp_path: Path) -> None:
    huge = b'{"question": "q", "answer": ' + b"1" * 5000 + b"}"  # over Python's integer digit limit
    raw = b"\n".join([_row(1), b"{not json", _row(2, "no marker"), huge, b"", _row(3)])
    examples, report = load_examples(_rows_file(tmp_path, raw))
    assert len(examples) == 2
    assert report.skipped == {"malformed JSON line": 2, "no final answer (#### N) in answer": 1}
    assert report.first["malformed JSON line"] == "rows.jsonl:2"
    assert report.first["no final answer (#### N) in answer"].startswith("row 3 (")
    assert "2 x malformed JSON line, first at rows.jsonl:2" in report.summary()


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "no rows"),
        (b"\n\n", "no rows"),
        (b"not json\nat all\n", "2 x malformed JSON line, first at rows.jsonl:1"),
        (b"[1, 2]\n", "1 x row is not a JSON object, first at rows.jsonl:1"),
    ],
)
def test_a_file_without_rows_says_why(tmp_path: Path, raw: bytes, words: str) -> None:
    with pytest.raises(ValueError) as e:
        load_examples(_rows_file(tmp_path, raw))
    assert words in str(e.value) and "columns []" not in str(e.value)


def test_folder_with_splits_and_heldout(tmp_path: Path) -> None:
    lines = Path(GSM8K).read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[3:5]) + "\n")
    spec = DataSpec(source="gsm8k", path=str(tmp_path))
    train, _ = load_examples(spec)
    heldout = load_heldout_examples(spec, 2)
    assert len(train) == 3 and len(heldout) == 2
    assert not {ex.question for ex in train} & {ex.question for ex in heldout}
    assert not {ex.id for ex in train} & {ex.id for ex in heldout}
    with pytest.raises(ValueError, match="only 2 usable"):
        load_heldout_examples(spec, 3)


def test_heldout_impossible_for_single_file() -> None:
    with pytest.raises(ValueError, match="no 'test' split"):
        load_heldout_examples(DataSpec(source="gsm8k", path=GSM8K), 2)
    with pytest.raises(ValueError, match="only a train split"):
        load_heldout_examples(DataSpec(source="metamathqa"), 2)


def test_file_sources_are_deterministic_windows() -> None:
    spec = DataSpec(source="gsm8k", path=GSM8K, seed=3)
    full, _ = load_examples(spec)
    assert load_examples(spec)[0] == full
    assert load_examples(spec, limit=2, offset=1)[0] == full[1:3]


@pytest.mark.parametrize(
    ("source", "path"),
    [("jsonl", "/nonexistent/data.jsonl"), ("parquet", "./missing.parquet"), ("gsm8k", "./missing.jsonl")],
)
def test_missing_file(source: str, path: str) -> None:
    with pytest.raises(FileNotFoundError, match="missing|nonexistent"):
        load_examples(DataSpec(source=source, path=path))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_examples(DataSpec(source="parquet", path=str(tmp_path)))


# ---------------------------------------------------------------- reasoning-gym


def test_default_tasks_mix_and_ids() -> None:
    spec = DataSpec(num_examples=300)
    examples, report = load_examples(spec)
    assert report.loaded == 300 and report.skipped == {}
    assert len({ex.id for ex in examples}) == 300
    assert Counter(ex.source for ex in examples) == {
        "chain_sum": 100,
        "basic_arithmetic": 100,
        "products": 100,
    }
    assert [ex.source for ex in examples[:3]] == ["chain_sum", "basic_arithmetic", "products"]
    for ex in examples:
        assert ex.answer.lstrip("-").isdigit()
        assert ex.solution is not None and ex.solution.endswith(f"The answer is {ex.answer}.")
        assert Example.from_json(json.loads(json.dumps(ex.to_json()))) == ex


def test_reasoning_gym_is_deterministic_and_windowed() -> None:
    spec = DataSpec(num_examples=60, seed=7)
    a, _ = load_examples(spec)
    b, _ = load_examples(spec)
    assert a == b
    assert load_examples(spec, limit=10, offset=25)[0] == a[25:35]
    other, _ = load_examples(DataSpec(num_examples=60, seed=8))
    assert [ex.question for ex in other] != [ex.question for ex in a]


def test_weights_and_duplicate_task_names() -> None:
    tasks = [
        ReasoningGymTask(name="products", weight=3.0, config={"min_digits": 1, "max_digits": 1}),
        ReasoningGymTask(name="products", weight=1.0, config={"min_digits": 2, "max_digits": 2}),
    ]
    examples, _ = load_examples(DataSpec(tasks=tasks, num_examples=40))
    prefixes = Counter(ex.id.rsplit("-", 1)[0] for ex in examples)
    assert prefixes == {"products.0": 30, "products.1": 10}
    assert len({ex.id for ex in examples}) == 40


def test_heldout_disjoint_from_training() -> None:
    spec = DataSpec(num_examples=600)
    train, _ = load_examples(spec)
    heldout = load_heldout_examples(spec, 150)
    assert len(heldout) == 150
    assert not {ex.question for ex in train} & {ex.question for ex in heldout}
    assert len({ex.question for ex in heldout}) == 150
    assert not {ex.id for ex in train} & {ex.id for ex in heldout}
    assert load_heldout_examples(spec, 150) == heldout


def test_heldout_exhausted_question_space() -> None:
    tasks = [ReasoningGymTask(name="products", config={"min_terms": 2, "max_terms": 2, "max_digits": 1})]
    spec = DataSpec(tasks=tasks, num_examples=50)
    with pytest.raises(ValueError, match="held-out questions"):
        load_heldout_examples(spec, 100)  # only 100 distinct 1-digit products exist


def test_unknown_task_name() -> None:
    tasks = [ReasoningGymTask(name="chain_sum"), ReasoningGymTask(name="chain_summ")]
    with pytest.raises(
        ValueError, match=r"data\.tasks\[1\] \(name='chain_summ'\): unknown reasoning-gym task"
    ):
        load_examples(DataSpec(tasks=tasks, num_examples=4))


def test_bad_task_config() -> None:
    bad_key = [ReasoningGymTask(name="products", config={"min_digitz": 1})]
    with pytest.raises(
        ValueError, match=r"data\.tasks\[0\] \(name='products'\): unknown config key.*min_digits"
    ):
        load_examples(DataSpec(tasks=bad_key, num_examples=4))
    bad_value = [ReasoningGymTask(name="chain_sum", config={"min_terms": 3, "max_terms": 2})]
    with pytest.raises(ValueError, match=r"data\.tasks\[0\] \(name='chain_sum'\): invalid config"):
        load_examples(DataSpec(tasks=bad_value, num_examples=4))


def test_example_json_roundtrip_and_report() -> None:
    ex = Example("gsm8k-train-000001", "Q?", "13", "gsm8k")
    assert ex.to_json() == {"id": "gsm8k-train-000001", "question": "Q?", "answer": "13", "source": "gsm8k"}
    assert Example.from_json(ex.to_json()) == ex
    with pytest.raises(ValueError, match="answer"):
        Example.from_json({"id": "x", "question": "q", "source": "s"})
    assert LoadReport(3).summary() == "loaded 3 examples, skipped none"


def test_wrong_golds_from_reasoning_gym_are_skipped() -> None:
    """reasoning-gym 0.1.25 basic_arithmetic without parentheses prints "4 / 1" but answers 2."""
    from flowdpo.data.tasks import expression_value

    assert expression_value("-( -( 6 / 6 ) ) + 2") == 3
    assert expression_value("__import__('os')") is None
    with pytest.raises(ZeroDivisionError):
        expression_value("4 / 0")
    tasks = [
        ReasoningGymTask(
            name="basic_arithmetic",
            config={
                "min_terms": 2,
                "max_terms": 2,
                "min_digits": 1,
                "max_digits": 1,
                "allow_parentheses": False,
            },
        )
    ]
    examples, report = load_examples(DataSpec(tasks=tasks, num_examples=100))
    assert len(examples) == 100
    assert report.skipped.get("basic_arithmetic: gold answer disagrees with its expression", 0) > 0
    for ex in examples:
        expr = ex.solution.split(" = ")[0] if ex.solution else ""
        assert expression_value(expr) == int(ex.answer)
