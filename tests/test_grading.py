"""Grading: answer extraction and comparison on real math-verify (no mocks).

A wrong "correct" here becomes a wrong DPO pair, so the table leans on the traps: unfinished
expressions, the last-number rule, and unevaluated arithmetic that math-verify would happily evaluate.
"""

from __future__ import annotations

import threading

import pytest

from flowdpo.grading import Grade, answers_match, extract_answer, grade

# (model text, gold, expected correct, expected extracted)
CASES = [
    # plain arithmetic chains and answer phrases from small chat models
    ("3 + 5 * 2 = 3 + 10 = 13.", "13", True, "13"),
    ("The answer is 13.", "13", True, "13"),
    ("**Answer:** 13", "13", True, "13"),
    ("**Answer**: 13", "13", True, "13"),
    ("The answer is: 7.", "7", True, "7"),
    ("The answer is **13**.", "13", True, "13"),
    ("The answer is $13$.", "13", True, "13"),
    ("8 * 9 = 72", "72", True, "72"),
    ("So the answer is 72 apples.", "72", True, "72"),
    ("The answer is 13. This is because addition combines two quantities.", "13", True, "13"),
    ("The answer is 13\n\nI hope this helps!", "13", True, "13"),
    ("First, 3 + 5 = 8. The answer is 8. Let me check: the answer is correct.", "8", True, "8"),
    ("The answer is 7 because 3 + 5 = 8", "8", False, "7"),
    # unfinished texts and unevaluated expressions: never an answer
    ("12 + 1 =", "13", False, None),
    ("12 + 1 =", "1", False, None),
    ("so the result is 12 +", "12", False, None),
    ("so 12 +", "13", False, None),
    ("The result is 12 + 1", "1", False, None),
    ("The result is 12 + 1", "13", False, None),
    ("5 - 4", "4", False, None),
    ("2 - -4", "-4", False, None),
    ("\\boxed{12 + 1}", "13", False, None),
    ("The answer is \\boxed{13", "13", False, None),
    ("The answer is:", "13", False, None),
    ("We get \\boxed{13}. Double-check: 12 + 1 =", "13", False, None),
    # boxed (nested braces, \fbox, last box wins)
    ("\\boxed{\\frac{1}{2}}", "0.5", True, "\\frac{1}{2}"),
    ("so $x = \\boxed{\\frac{\\sqrt{2}}{2}}$", "\\frac{\\sqrt{2}}{2}", True, "\\frac{\\sqrt{2}}{2}"),
    ("First \\boxed{9}, then adding 4 gives \\boxed{13}.", "13", True, "13"),
    ("\\fbox{7}", "7", True, "7"),
    ("The final answer is $\\boxed{x = 5}$.", "5", True, "5"),
    # #### and thousands separators
    ("#### 1,234", "1234", True, "1,234"),
    ("The library has 1,234 books now.", "1234", True, "1,234"),
    ("1,234,567", "1234567", True, "1,234,567"),
    ("He paid 617 * 2 = 1,234 dollars.\n#### 1234", "1,234", True, "1234"),
    # signs, decimals, fractions
    ("-4", "4", False, "-4"),
    ("The answer is -4.", "-4", True, "-4"),
    ("x = -4", "-4", True, "-4"),
    ("\u22124", "-4", True, "-4"),
    ("13.0", "13", True, "13.0"),
    ("the answer is 3.5", "3.5", True, "3.5"),
    ("0.5", "\\frac{1}{2}", True, "0.5"),
    ("Answer: $\\frac{3}{4}$", "0.75", True, "\\frac{3}{4}"),
    ("The answer is 0.33", "\\frac{1}{3}", False, "0.33"),
    ("The final answer is 2\\sqrt{3}.", "2\\sqrt{3}", True, "2\\sqrt{3}"),
    ("The answer is 2\\sqrt{3}", "2", False, "2\\sqrt{3}"),
    # several numbers: the last one wins
    ("I have 3 apples and 5 pears, so 8 fruits.", "8", True, "8"),
    ("The product is (3)(4) = 12", "12", True, "12"),
    ("The answer is 50%.", "50", True, "50"),
    ("The answer is \\$18.90.", "18.9", True, "18.90"),
    # nothing to extract
    ("", "1", False, None),
    ("   \n ", "1", False, None),
    ("I am not sure how to solve this.", "1", False, None),
]


@pytest.mark.parametrize(("text", "gold", "correct", "extracted"), CASES)
def test_grade_table(text: str, gold: str, correct: bool, extracted: str | None) -> None:
    assert grade(text, gold) == Grade(correct, extracted)


def test_table_is_large() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    ("gold", "pred"),
    [("13", "13.0"), ("1234", "1,234"), ("-4", "-4"), ("0.5", "0.50"), ("7", "+7"), ("1000", "1,000")],
)
def test_fast_numeric_path_agrees_with_math_verify(gold: str, pred: str) -> None:
    from math_verify import parse, verify

    assert answers_match(gold, pred) is True
    assert verify(parse(f"${gold}$"), parse(f"${pred}$")) is True


@pytest.mark.parametrize(("gold", "pred"), [("13", "-13"), ("4", "-4"), ("12", "13"), ("0.5", "5")])
def test_numbers_that_differ(gold: str, pred: str) -> None:
    assert answers_match(gold, pred) is False


def test_grade_in_worker_thread() -> None:
    """math-verify's signal-based timeouts only work in the main thread; grade() must work anywhere."""
    results: list[Grade] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(grade("Answer: $\\frac{3}{4}$", "0.75"))
            results.append(grade("\\boxed{\\frac{1}{2}}", "\\frac{2}{4}"))
            results.append(grade("12 + 1 =", "13"))
        except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=30)
    assert not errors
    assert results == [Grade(True, "\\frac{3}{4}"), Grade(True, "\\frac{1}{2}"), Grade(False, None)]


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{",
        "\\boxed{}",
        "$$",
        "\\frac{",
        "}}}{{{",
        "\\boxed{\\frac{1}{0}}",
        "=" * 500,
        "9" * 5000,
        "\x00",
    ],
)
def test_never_raises_on_garbage(text: str) -> None:
    g = grade(text, "1")
    assert isinstance(g, Grade)
    assert g.correct is False


def test_non_string_prediction() -> None:
    assert grade(None, "1") == Grade(False, None)  # type: ignore[arg-type]


def test_extract_answer_priority() -> None:
    # boxed beats "answer is", which beats the last number
    assert extract_answer("The answer is 5. Final: \\boxed{6}. Then 7") == "6"
    assert extract_answer("#### 4\nThe answer is 5") == "4"
    assert extract_answer("The answer is 5, not 6 or 7") == "5"
