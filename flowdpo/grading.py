"""Outcome grading: did a flow's final text reach the gold answer?

Grading decides every DPO pair (chosen = the branch that ends correct), so a false positive teaches the
flow to stop early. Two traps shape this module:

* An answer cut off at a chunk boundary ("... = 12 + 1 =") contains numbers; a "last number" rule or
  math-verify on the whole line would read it as 1 or as 13. A text that ends in an operator, "=" or
  ":" (or inside an unclosed `\\boxed{`) therefore has NO answer, and an extracted candidate that is an
  unevaluated arithmetic expression ("12 + 1") is rejected too.
* math-verify is only ever given the extracted final answer, never a whole line.

Comparison: plain numbers are compared exactly as decimals (fast path, the common case for the
arithmetic tasks); anything else goes to math-verify with the gold FIRST,
`verify(parse(gold), parse(pred))`, both wrapped in `$...$` (unwrapped, `2\\sqrt{3}` parses as 2).
Any math-verify error falls back to a normalized string comparison; `grade` never raises.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from flowdpo.data.answers import UnclosedBox, last_boxed

log = logging.getLogger(__name__)

# Seconds math-verify may spend on one parse/verify (signal-based: main thread only).
MATH_VERIFY_TIMEOUT_S = 3
# Candidates longer than this are not final answers; they would only make math-verify slow.
MAX_ANSWER_CHARS = 200

_MINUS = "\u2212"  # unicode minus sign, as some tokenizers emit
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_PLAIN_NUMBER_RE = re.compile(rf"^(?:{_NUMBER})$")
_SIMPLE_VALUE_RE = re.compile(rf"^(?:{_NUMBER})(?:\s*/\s*(?:{_NUMBER}))?$")  # 13, -4, 1,234, 3/4
_LEADING_NUMBER_RE = re.compile(rf"^({_NUMBER})(?=\s*$|\s+[A-Za-z]|\s*[%,;:!?)\]])")
_ANY_NUMBER_RE = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_PURE_ARITHMETIC_RE = re.compile(r"^[\d\s.,+\-*/×÷^()\[\]]+$")
_ARITH_OP_RE = re.compile(r"[+\-*/×÷^]")
_UNFINISHED_END_RE = re.compile(r"(?:[=+\-*/×÷^:(]|\\times|\\cdot|\\div|\\pm)$")
_TRAILING_WRAP_RE = re.compile(r"(?:\*\*|__|\$|\\\]|\\\)|`)+$")
_ANSWER_MARK_RE = re.compile(r"\banswer\b(?:\s*(?:\*\*|__))?\s*(?:is\b\s*:?|:|=)", re.IGNORECASE)
_HASH_MARK_RE = re.compile(r"####")
_SENTENCE_END_RE = re.compile(r"[.;!?](?=\s|$)|\n")


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None  # the answer string extracted from the prediction (None if none)


def _strip_wrappers(s: str) -> str:
    """Remove markdown/LaTeX wrappers and trailing punctuation around a candidate answer."""
    prev = None
    while prev != s:
        prev = s
        s = s.strip()
        s = re.sub(r"^(?:\*\*|__|`|\$|\\\(|\\\[)+", "", s)
        s = re.sub(r"(?:\*\*|__|`|\$|\\\)|\\\])+$", "", s)
        s = s.rstrip(".,;!?").strip()
        s = re.sub(r"^\\\$", "", s)  # a currency sign "\$18.90"
    return s


def _is_unfinished(text: str) -> bool:
    """True when the text ends mid-expression ("12 + 1 =", "so 12 +", "The answer is:")."""
    t = text.rstrip()
    t = _TRAILING_WRAP_RE.sub("", t).rstrip()
    return bool(_UNFINISHED_END_RE.search(t.replace(_MINUS, "-")))


def _finalize(candidate: str) -> str | None:
    """Turn the text after an answer marker (or a box's content) into one final answer, or None.

    Keeps the part after the last "=", the leading number of "13 apples", and rejects unevaluated
    arithmetic such as "12 + 1" (math-verify would evaluate it to 13).
    """
    s = _strip_wrappers(candidate.replace(_MINUS, "-"))
    lead = _LEADING_NUMBER_RE.match(s)
    if lead and not _SIMPLE_VALUE_RE.match(s):
        return lead.group(1)  # "13 apples", "1,234, which is ...", "7 because 3 + 4 = 7"
    if "=" in s:
        s = _strip_wrappers(s.rsplit("=", 1)[1])
    if not s or len(s) > MAX_ANSWER_CHARS or _is_unfinished(s):
        return None
    if _PURE_ARITHMETIC_RE.match(s) and not _SIMPLE_VALUE_RE.match(s):
        body = s.strip("()[] ")
        if _SIMPLE_VALUE_RE.match(body):
            return body
        if _ARITH_OP_RE.search(body.lstrip("+-")):
            return None  # an expression, not its value
    return s


def _after_marker(text: str, marker: re.Pattern[str]) -> str | None:
    """The answer after the last marker whose candidate looks like an answer (has a digit or LaTeX)."""
    found: list[str | None] = []
    for m in marker.finditer(text):
        rest = text[m.end() :].lstrip(" \t*_:")
        end = _SENTENCE_END_RE.search(rest)
        found.append(_finalize(rest[: end.start()] if end else rest))
    if not found:
        return None
    for cand in reversed(found):
        if cand is not None and re.search(r"[\d\\]", cand):
            return cand
    return found[-1]


def _last_number(text: str) -> str | None:
    """The last number, unless it is the right operand of an operator ("12 + 1") - then None."""
    t = text.replace(_MINUS, "-")
    matches = list(_ANY_NUMBER_RE.finditer(t))
    if not matches:
        return None
    m = matches[-1]
    value = m.group(0)
    before = t[: m.start()].rstrip()
    if before.endswith("-"):
        operand = before[:-1].rstrip()
        # "x = -4" / "is -4": a sign; "5 - 4" / "2 - -4": a binary minus (an unevaluated expression).
        if operand and (operand[-1].isdigit() or operand[-1] in ")]}" or operand.endswith("-")):
            return None
        value = "-" + value
    elif before.endswith(("+", "*", "/", "×", "÷", "^")) or re.search(r"\\(?:times|cdot|div)$", before):
        return None
    return value


def extract_answer(text: str) -> str | None:
    """The final answer in a model's text, or None if it has none (or is unfinished).

    Order: last `\\boxed{}`, then `#### X`, then "answer is[:] X" / "Answer: X", then the last number.
    """
    if not isinstance(text, str) or not text.strip() or _is_unfinished(text):
        return None
    try:
        boxed = last_boxed(text)
    except UnclosedBox:
        return None
    if boxed is not None:
        return _finalize(boxed)
    for marker in (_HASH_MARK_RE, _ANSWER_MARK_RE):
        if marker.search(text):
            return _after_marker(text, marker)
    return _last_number(text)


def _as_decimal(s: str) -> Decimal | None:
    t = _strip_wrappers(s.replace(_MINUS, "-")).replace(" ", "")
    if not _PLAIN_NUMBER_RE.match(t):
        return None
    try:
        return Decimal(t.replace(",", ""))
    except InvalidOperation:
        return None


def _normalize(s: str) -> str:
    """Loose string form for the fallback comparison (no math-verify)."""
    t = _strip_wrappers(s.replace(_MINUS, "-"))
    t = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", t)
    t = (
        t.replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace("\\left", "")
        .replace("\\right", "")
    )
    t = t.replace("\\!", "").replace("\\,", "").replace("{,}", "")
    t = re.sub(r"\s+", "", t)
    t = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", t)
    return t.strip("{}").lower()


def _math_verify(gold: str, pred: str) -> bool | None:
    """math-verify's verdict, or None if it cannot parse either side or fails."""
    from math_verify import parse, verify  # deferred: sympy import cost only where grading runs

    # signal.alarm timeouts only work in the main thread; elsewhere run without (inputs are short).
    main = threading.current_thread() is threading.main_thread()
    limit = MATH_VERIFY_TIMEOUT_S if main else None
    try:
        g = parse(f"${_strip_wrappers(gold)}$", parsing_timeout=limit)
        p = parse(f"${_strip_wrappers(pred)}$", parsing_timeout=limit)
        if not g or not p:
            return None
        return bool(verify(g, p, timeout_seconds=limit))
    except Exception as e:  # noqa: BLE001 - math-verify/sympy raise almost anything on odd input
        log.debug("math-verify failed on gold=%r pred=%r: %s", gold, pred, e)
        return None


def answers_match(gold: str, pred: str) -> bool:
    """Compare a gold final answer with an extracted one; never raises."""
    gd, pd = _as_decimal(gold), _as_decimal(pred)
    if gd is not None and pd is not None:
        return gd == pd
    verdict = _math_verify(gold, pred)
    if verdict:
        return True
    return _normalize(gold) == _normalize(pred)


def grade(prediction_text: str, gold: str) -> Grade:
    """Grade a model's full final text against the gold final answer (e.g. Example.answer)."""
    try:
        extracted = extract_answer(prediction_text)
    except Exception as e:  # noqa: BLE001 - grading runs for every rollout; never crash a worker
        log.warning("answer extraction failed: %s", e)
        return Grade(False, None)
    if extracted is None:
        return Grade(False, None)
    try:
        return Grade(answers_match(str(gold), extracted), extracted)
    except Exception as e:  # noqa: BLE001 - same: a wrong verdict is better than a dead worker
        log.warning("grading failed (gold=%r, extracted=%r): %s", gold, extracted, e)
        return Grade(False, extracted)
