"""Outcome grading: did a flow's final text reach the gold answer?

Grading decides every DPO pair (chosen = the branch that ends correct), so a false positive teaches the
flow to stop early or to ramble, and a false negative punishes a right answer. `grade(text, gold)` never
raises and stays fast (it runs for every rollout).

Policy: which answer a text gives
---------------------------------
1. **Answer statements.** A text states answers in three strengths:
   * *strong* markers: `\\boxed{X}` / `\\fbox{X}` and `#### X`;
   * *answer phrases*: the word "answer" in a marker form ("the answer is X", "Answer: X", "the answer to
     this problem is X", "the final answer is X", "X is the answer"), "the final result / total / value
     is X" and "Final: X";
   * *value statements*: "the sum / total / result / product / difference / value / cost / ... is X",
     "... equals X", "... is equal to X", and conclusion sentences that start with So / Therefore /
     Thus / Hence / In total / Altogether / In conclusion / Finally and assert a value ("So, 13.",
     "Therefore, x = 5", "So he has 10 apples").
   The answer is the LAST strong marker; without one, the LAST answer phrase. Unmarked text after
   either is chatter and never overrides it ("The answer to this problem is 1. ... 1 + 1 = 2" gives 1;
   "#### 4\\nThe answer is 5" gives 4). Value statements are also the steps of a computation ("The sum
   of 25 and 17 is 42. Now 42 - 8 = 34."), so the last one counts only when no computation ("=",
   "42 - 8") and no new value assertion ("..., which is 14") follows it, and only in a finished text;
   otherwise the unmarked rules (3.) apply.
2. **Corrections and retractions.** After the chosen statement, a *hard* correction cue ("that is
   wrong / incorrect / not right", "I made a mistake / an error", "my mistake", "oops", "sorry",
   "correction", "let me recalculate / redo / correct", "miscalculated") replaces the answer by whatever the text after the cue answers, under these same
   rules, or by NO answer if it gives none ("#### 12\\nWait, that is wrong." has no answer). A *soft*
   cue ("actually", "wait", "hmm", "on second thought", "no,") replaces it only when a new answer is
   stated after it ("#### 12\\nActually it is 13" and "wait, ... so it is 13" give 13); "The answer is 13.
   We actually add 6 and 7." stays 13.
3. **Unmarked text.** With no statement at all, a text that is itself a short bare answer ("-4",
   "2^(n-1)", "x = 1 or x = -2", "No"; at most 32 characters and 3 words, like the gold side's
   `generic_final`) is its own answer; otherwise a trailing list of assignments ("... so x = 1 or x = -2")
   is a multi-part answer; otherwise the LAST number is the answer, unless it is the right operand of an
   operator ("12 + 1") or a hard correction cue follows it.
4. **Unfinished texts.** A text cut off mid-expression (ends in an operator, "=", ":", "(", a comma, an
   unclosed `\\boxed{`), mid-clause (ends in a connective such as "which is", "gives", "equals", "of",
   "and", "to get", "we get", "the") or mid-sentence (no final punctuation after a word that is not the
   unit of a number: "... multiplying the numerator" is cut off, "so Tom has 10 apples" is finished)
   reaches NO answer from its unmarked text or value statements: "Start from 13 and subtract 4, which
   is" has no answer. An explicit answer statement made EARLIER in the text still
   counts ("The answer is 9. Check: 13 - 4 is" gives 9), unless the cut-off tail holds a correction cue
   or is itself a statement being written ("The answer is \\boxed{13" has none).
5. **What a candidate is.** math-verify is only ever given an extracted candidate, never a line. The
   candidate keeps the value after the last "=" ("x = 5" gives 5), the leading number of "13 apples",
   and value notations: powers (`2^10`, `10^{6}`), scientific notation (`1.5 \\times 10^3`), factorials
   in math context (`\\boxed{5!}` is 120; a prose "The answer is 5!" is an exclamation). Unevaluated
   arithmetic ("12 + 1", `\\boxed{12 + 1}`) is NOT an answer (math-verify would evaluate it to 13).
6. **Multi-part answers.** A candidate or gold whose top level (outside brackets) is a list joined by
   ",", ";", "and", "or" (`3, 5`; `x=16 and x=81`; `x = 1 or x = -2`; `x=±1`, where ± gives both signs)
   is compared part by part as a SET: same number of parts, each matched once; "x=" names must agree
   where both sides give them. A bracketed `(2, 3)` / `[-1, 1]` is one ordered object (tuple or
   interval) compared whole. A single-value gold never matches a multi-part prediction that merely
   contains it ("3, 5" is wrong for 5), nor the other way round.

Comparison of two single values: plain numbers exactly as decimals (the common case); anything else by
math-verify with the gold FIRST, `verify(parse(gold), parse(pred))`, both wrapped in `$...$`, and only
when math-verify's parse consumed the WHOLE candidate (every digit, word and variable of it: a parse
that reads `2^floor(n/2)` as 2 or "7 apples" as 7 gives no verdict); otherwise, or on any math-verify
error, a normalized string comparison.

Bounds: only the last MAX_TEXT_CHARS characters of a text are read; candidates over MAX_ANSWER_CHARS,
brace nesting over MAX_BRACE_DEPTH, exponents over MAX_EXPONENT and factorials over MAX_FACTORIAL never
reach math-verify (string comparison only), so a pathological text cannot stall a worker, also in
threads where math-verify's signal-based timeout is unavailable.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from flowdpo.data.answers import UnclosedBox, all_boxed

log = logging.getLogger(__name__)

# Seconds math-verify may spend on one parse/verify (signal-based: main thread only).
MATH_VERIFY_TIMEOUT_S = 3
# Candidates longer than this are not final answers; they would only make math-verify slow.
MAX_ANSWER_CHARS = 200
# Only this many trailing characters of a text are read (the final answer is at its end).
MAX_TEXT_CHARS = 20_000
MAX_BRACE_DEPTH = 8
MAX_EXPONENT = 4_000
MAX_FACTORIAL = 500
# How far after a marker its answer sentence is looked for (keeps many markers linear in the text).
_WINDOW = 1_000
_LAST_MARKERS = 16
# A whole text this short (and of at most 3 words) is a bare answer, like a gold in `generic_final`.
BARE_MAX_CHARS = 32
BARE_MAX_WORDS = 3

_MINUS = "\u2212"  # unicode minus sign, as some tokenizers emit
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|[-+]?\.\d+"
_PLAIN_NUMBER_RE = re.compile(rf"^(?:{_NUMBER})$")
_SIMPLE_VALUE_RE = re.compile(rf"^(?:{_NUMBER})(?:\s*/\s*(?:{_NUMBER}))?$")  # 13, -4, 1,234, 3/4
_ANY_NUMBER_RE = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_PURE_ARITHMETIC_RE = re.compile(r"^[\d\s.,+\-*/×÷^!()\[\]{}]+$")
_ARITH_OP_RE = re.compile(r"[+\-*/×÷^]")
_UNFINISHED_END_RE = re.compile(r"(?:[=+\-*/×÷^:(,]|\\times|\\cdot|\\div|\\pm|\\frac|\\sqrt)$")
_CALCULATOR_RE = re.compile(r"<<[^<>\n]{0,200}>>")
_TRAILING_WRAP_RE = re.compile(r"(?:\*\*|__|\$|\\\]|\\\)|`)+$")
_SENTENCE_END_RE = re.compile(r"(?<!\d)[.;!?](?=\s|$)|[.;!?](?=\s+[A-Z(\\$])|\n")

# Value notations that are answers, not unevaluated arithmetic.
_INT = r"\d+"
_EXP = r"(?:\{\s*[-+]?\d+\s*\}|[-+]?\d+)"
_POWER_RE = re.compile(rf"^[-+]?{_INT}\s*\^\s*{_EXP}$")  # 2^10, 10^{6}
_SCI_RE = re.compile(rf"^[-+]?\d+(?:\.\d+)?\s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*{_EXP}$")
_FACTORIAL_RE = re.compile(r"^[-+]?\d+\s*!$")

# Closed-class words a finished clause does not end with ("..., which is", "we get", "the sum of").
_CONNECTIVE_WORDS = """
a an the this that these those its our their his her my your of to from by with for in on at as than
into onto over under per each and or but nor so then thus therefore hence because since if when while
which who whose where whereas is are was were be been being am equals equal equaling gives give giving
gave get gets getting got makes make making made yields yield leaves leave becomes become means mean
plus minus times divided multiplied subtract subtracting add adding added multiply multiplying divide
dividing find calculate compute obtain we us it let let's now finally first next would will can could
should must has have had do does answer result sum total product difference quotient remainder value
"""
_CONNECTIVES = frozenset(_CONNECTIVE_WORDS.split())
_LAST_WORD_RE = re.compile(r"([A-Za-z']+)\W*$")

_CORRECTION_HARD_RE = re.compile(
    r"\b(?:is|was|are|were|'s|seems?)\s+(?:wrong|incorrect|not\s+(?:right|correct))\b"
    r"|\b(?:i|we)\s+(?:made|make|have made)\s+(?:a|an)\s+(?:\w+\s+)?(?:mistake|error)\b"
    r"|\bmy\s+(?:mistake|bad|error)\b|\boops\b|\bsorry\b|\bcorrection\b|\bmiscalculat\w*"
    r"|\blet\s+me\s+(?:re-?calculate|re-?compute|redo|correct|fix)\b|\bthat'?s\s+(?:wrong|incorrect)\b",
    re.IGNORECASE,
)
_CORRECTION_SOFT_RE = re.compile(
    r"\b(?:actually|wait|hmm+|on second thought|scratch that)\b|(?:^|[.!?]\s+|\n)no,",
    re.IGNORECASE,
)

_NOUNS_ANSWER = r"answer"
_NOUNS_VALUE = (
    r"sum|total|product|difference|quotient|remainder|value|cost|price|amount|area|perimeter|volume|"
    r"probability|average|mean|count|number|solutions?|roots?|zeros?|length|distance|speed|age|profit"
)
_COPULA = r"(?:\b(?:is equal to|is|are|was|were|will be|would be|should be|must be|equals|comes to)\b|=|:)"
_GAP = r"[^.;!?\n=:]{0,60}?"  # a short gap inside one sentence ("to this problem", "of 3 and 5")

# "the answer is X", "Answer: X", "the final answer to the question is X", "the (final) result is X".
# After "answer": only a short prepositional phrase before the copula ("the answer to this problem is"),
# never a computation ("To find the answer, we compute 3 + 4 = 7" states no answer).
_ANSWER_GAP = r"(?:\s+(?:to|for|of|in|on)\b[^.;!?\n=:,\d+*/]{0,40}?)?"
# "the answer is X", "Answer: X", "the final answer to the question is X", "the final result is X".
_ANSWER_PHRASE_RE = re.compile(
    rf"\b(?:{_NOUNS_ANSWER})\b(?:\s*(?:\*\*|__))?{_ANSWER_GAP}\s*(?:\*\*|__)?\s*(?:{_COPULA})(?:\s*:)?"
    rf"(?=\s|\$|\\|\*|_|[-+\d(])"
    rf"|\b(?:{_NOUNS_ANSWER})(?:\s*(?:\*\*|__))?\s*:"
    rf"|\bfinal\s+(?:result|total|value|count|sum)\b{_ANSWER_GAP}\s*(?:{_COPULA})(?=\s|\$|\\|[-+\d(])"
    rf"|\bfinal\s*:",
    re.IGNORECASE,
)
# "X is the answer" / "X is our final answer": the value BEFORE the phrase.
_REVERSE_ANSWER_RE = re.compile(
    rf"(?<![\d.,])({_NUMBER}|\$[^$]{{1,60}}\$)\s+is\s+(?:the|our|my)\s+(?:final\s+|correct\s+)?answer\b",
    re.IGNORECASE,
)
_VALUE_STATEMENT_RE = re.compile(
    rf"\b(?:result|{_NOUNS_VALUE})\b{_GAP}\s*(?:{_COPULA})(?=\s|\$|\\|[-+\d(])"
    r"|\b(?:equals|is equal to)(?=\s)",
    re.IGNORECASE,
)
# A computation or a new value assertion after a value statement supersedes it; chatter does not.
_COMPUTATION_RE = re.compile(
    r"=|\d\s*(?:[-+*/×÷x]|\\times|\\cdot|\\div)\s*[-+]?\(?\d"
    r"|\b(?:is|are|was|were|equals|gives|get|gets|got|makes)\s+(?:us\s+|now\s+)?[-+]?\$?\d",
    re.IGNORECASE,
)
_CONCLUSION_START_RE = re.compile(
    r"(?:^|(?<=[.!?:]\s)|(?<=\n)|(?<=[.!?]))\s*(?:so|therefore|thus|hence|in total|altogether|"
    r"in conclusion|finally|overall)\b\s*,?\s*",
    re.IGNORECASE,
)
_CONCLUSION_VERB_RE = re.compile(
    r"\b(?:is|are|was|were|equals|has(?! to)|have(?! to)|had(?! to)|gets|got|makes|made|costs|comes to|"
    r"totals|remain|remains|left|needs|spent|spends|earns|earned|pays|paid|sells|sold|reads|read)\b|=",
    re.IGNORECASE,
)
# In a correction tail: "it is 13", "it's 13", "should be 13", "is actually 13".
_RESTATE_RE = re.compile(
    r"\b(?:it|that|this|which)\s*(?:is|'s|was)\s+(?:actually\s+|really\s+)?(?=[-+\d$\\(])"
    r"|\b(?:should|must|would)\s+be\s+(?=[-+\d$\\(])|\bis\s+actually\s+(?=[-+\d$\\(])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None  # the answer string extracted from the prediction (None if none)


@dataclass(frozen=True)
class _Statement:
    start: int  # where the statement starts in the text
    end: int  # where its candidate ends
    candidate: str


# ----------------------------------------------------------------------------------------------------
# candidate clean-up


def _strip_wrappers(s: str) -> str:
    """Remove markdown/LaTeX wrappers and trailing punctuation around a candidate answer."""
    prev = None
    while prev != s:
        prev = s
        s = s.strip()
        s = re.sub(r"^(?:\*\*|__|`|\$|\\\(|\\\[)+", "", s)
        s = re.sub(r"(?:\*\*|__|`|\$|\\\)|\\\])+$", "", s)
        s = s.rstrip(".,;?").strip()
        s = re.sub(r"(?<![\d}])!+$", "", s).strip()  # "13!" is handled by the caller (factorial or not)
        s = re.sub(r"^\\\$", "", s)  # a currency sign "\$18.90"
        s = re.sub(r"^\\(?:displaystyle|textstyle)\s*", "", s)
    return s


def _is_unfinished(text: str, strict: bool = False) -> bool:
    """True when the text ends mid-expression ("12 + 1 =", "so 12 +", "The answer is:", "13,") or
    mid-clause ("..., which is", "we get", "the sum of").

    `strict` (whole texts, not candidates): also a text that stops mid-sentence, with no final
    punctuation after a word that is not the unit of a number ("... multiplying the numerator" is cut
    off; "so Tom has 10 apples" is finished).
    """
    t = text.replace(_MINUS, "-").rstrip()
    t = _TRAILING_WRAP_RE.sub("", t).rstrip()
    if not t:
        return True
    if _UNFINISHED_END_RE.search(t):
        return True
    if t[-1].isalpha() or t[-1] == "'":
        m = _LAST_WORD_RE.search(t)
        if m and m.group(1).lower() in _CONNECTIVES:
            return True
        if strict:
            last = re.split(r"[.;!?:\n]", t)[-1]
            unit = re.search(r"\d[%)}\]]?\s+([A-Za-z][\w'-]*)(?:\s+[A-Za-z][\w'-]*){0,2}$", last)
            if unit is None or unit.group(1).lower() in _CONNECTIVES:
                return True  # "... multiply 12 by the numerator"; "... has 10 apples" is finished
    return False


def _is_value_notation(s: str) -> bool:
    s = s.replace(" ", "")
    return bool(_POWER_RE.match(s) or _SCI_RE.match(s) or _FACTORIAL_RE.match(s))


_VERBAL_EQUALS_RE = re.compile(
    r",?\s*\b(?:(?:which|that|this)\s+(?:is|equals|gives(?:\s+us)?|makes)|equals|is\s+equal\s+to)\b\s*",
    re.IGNORECASE,
)
# A cut-off tail that is itself an answer statement being written ("... The correct answer").
_PENDING_STATEMENT_RE = re.compile(
    r"\b(?:answer|result|final(?:ly)?|so|therefore|thus|hence)\b", re.IGNORECASE
)
_LEADING_VALUE_RE = re.compile(
    rf"^(?:[-+]?\d+(?:\.\d+)?\s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*{_EXP}"
    rf"|[-+]?\d+\s*\^\s*{_EXP}|(?:{_NUMBER})(?:\s*/\s*\d+(?![\d.]))?)"
)


def _leading_number(s: str, math_ctx: bool) -> str | None:
    """The value that starts "13 apples", "1,234, which is ...", "2^10, which is large", "7 because
    3 + 4 = 7" (None if the candidate does not start with a value followed by words or punctuation)."""
    m = _LEADING_VALUE_RE.match(s)
    if not m:
        return None
    rest = s[m.end() :]
    if not rest.strip():
        return None  # the whole candidate is the value: nothing to cut
    rest = re.sub(r"^(?:\*\*|__|`|\$)+(?=\W|$)", "", rest)  # "**13**, which ..."
    if re.match(r"^\s*(?:\^|\\times|\\cdot|\*|×|/|\.\d|\\%)", rest):
        return None  # the value goes on (an expression): not a value followed by words
    if rest.startswith("!"):
        if math_ctx or re.match(r"^!\s*[\w\\(=]", rest):
            return None  # a factorial: 5! (in math context), "5! = 120"
        return m.group(0).strip()  # prose: "The answer is 5!" is an exclamation
    if re.match(r"^(?:\s*$|\s+[A-Za-z]|\s*[%,;:?)\]]|\s*\\(?:text|mbox|mathrm|,|;|quad)\b)", rest):
        return m.group(0).strip()
    return None


def _last_top_level_eq(s: str) -> int:
    """Index of the last "=" outside brackets (not the "k=1" of "sum_(k=1)^n"), or -1."""
    depth = 0
    found = -1
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "=" and depth == 0:
            found = i
    return found


def _finalize(candidate: str, math_ctx: bool = False) -> str | None:
    """Turn the text after an answer marker (or a box's content) into one final answer, or None.

    Keeps multi-part lists whole, the part after the last "=", the leading number of "13 apples" and
    value notations (2^10, 5!, 1.5 \\times 10^3); rejects unevaluated arithmetic such as "12 + 1".
    """
    raw = candidate.replace(_MINUS, "-").strip()
    if not raw:
        return None
    math_ctx = math_ctx or raw.startswith(("$", "\\(", "\\["))
    s = _strip_wrappers(raw)
    if not s:
        return None
    if _split_parts(s) is not None:
        return s  # "3, 5", "x = 1 or x = -2": a multi-part answer, compared as a set
    lead = _leading_number(s, math_ctx)
    if lead is not None and not _SIMPLE_VALUE_RE.match(s):
        return lead  # "13 apples", "1,234, which is ...", "7 because 3 + 4 = 7"
    if len(s) > MAX_ANSWER_CHARS:
        return None
    # "2 + 3, which equals 5" / "12 + 1 which is 13": the value after a verbal "="
    s = _VERBAL_EQUALS_RE.sub(" = ", s)
    eq = _last_top_level_eq(s)
    if eq >= 0 and not re.search(r"[<>]=|=[<>]|\\[lg]eq?\b|\\neq\b", s):
        s = _strip_wrappers(s[eq + 1 :])
        if not s:
            return None
        lead = _leading_number(s, math_ctx)
        if lead is not None and not _SIMPLE_VALUE_RE.match(s):
            return lead
    if not s or _is_unfinished(s):
        return None
    if s.endswith("!") and not math_ctx and not _FACTORIAL_RE.match(s.replace(" ", "")):
        s = s.rstrip("!").strip()
    if _is_value_notation(s):
        return s
    if _PURE_ARITHMETIC_RE.match(s) and not _SIMPLE_VALUE_RE.match(s):
        body = s.strip("()[]{} ")
        if _SIMPLE_VALUE_RE.match(body):
            return body
        if _is_value_notation(body):
            return body
        if _ARITH_OP_RE.search(body.lstrip("+-")) or "!" in body:
            return None  # an expression, not its value
    return s


# ----------------------------------------------------------------------------------------------------
# multi-part answers

_PART_SEP_RE = re.compile(
    r"\s*(?:,\s*(?:and|or)\s+|;\s*|\s(?:and|or)\s|\\text\{\s*(?:and|or|,)\s*\}|\\(?:quad|qquad)\b)\s*"
    r"|,(?!\d{3}(?!\d))\s*"
)
_LHS_RE = re.compile(r"^\s*([A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?)\s*=\s*(?!=)")
_WORD_RE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\b")


def _top_level_split(s: str) -> list[str]:
    """Split `s` at part separators that are outside (), [], {}."""
    parts: list[str] = []
    depth = 0
    last = 0
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in "{}":
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            m = _PART_SEP_RE.match(s, i)
            if m and m.end() > i:
                parts.append(s[last:i])
                last = m.end()
                i = m.end()
                continue
        i += 1
    parts.append(s[last:])
    return parts


def _answer_like(part: str) -> bool:
    """A part of a multi-part answer: an optional "x =" then a short math value, no prose words."""
    p = _LHS_RE.sub("", part.strip(), count=1).strip()
    p = _strip_wrappers(p)
    if not p or len(p) > 60:
        return False
    if not re.search(r"[\d\\]|^[-+±]?[A-Za-z]$", p):
        return False
    unit = re.match(rf"^(?:{_NUMBER})\s+([A-Za-z]+)(?:\s+[A-Za-z]+)?$", p)
    if unit and unit.group(1).lower() not in _CONNECTIVES:
        return True  # "13 apples" in "13 apples, 2 pears"
    no_cmds = re.sub(r"\\[A-Za-z]+", " ", p)
    return not _WORD_RE.search(no_cmds) and not _is_arithmetic(p)


def _is_arithmetic(p: str) -> bool:
    """An unevaluated numeric expression ("12 + 1") is not a part."""
    q = p.replace(" ", "").replace("±", "")
    return bool(
        _PURE_ARITHMETIC_RE.match(q)
        and not _SIMPLE_VALUE_RE.match(q)
        and not _is_value_notation(q)
        and _ARITH_OP_RE.search(q.lstrip("+-"))
    )


def _unwrap_set(s: str) -> str:
    """`\\{1, -2\\}` / `{1, -2}` (a set written with braces) -> its content; other text unchanged."""
    t = s.strip()
    for open_, close in (("\\{", "\\}"), ("\\left\\{", "\\right\\}")):
        if t.startswith(open_) and t.endswith(close):
            return t[len(open_) : -len(close)]
    return t


def _split_parts(s: str) -> list[str] | None:
    """The parts of a multi-part answer ("3, 5" -> ["3", "5"]), or None when `s` is one answer."""
    t = _unwrap_set(_strip_wrappers(s.replace(_MINUS, "-")))
    if len(t) > MAX_ANSWER_CHARS:
        return None
    parts = [p.strip() for p in _top_level_split(t)]
    if len(parts) < 2 or not all(_answer_like(p) for p in parts):
        return None
    return parts


def _expand_parts(parts: list[str]) -> list[tuple[str | None, str]]:
    """(name, value) per part; "x=16" -> ("x", "16"); "±2" -> two parts (2 and -2)."""
    out: list[tuple[str | None, str]] = []
    for part in parts:
        m = _LHS_RE.match(part)
        lhs = m.group(1).replace(" ", "") if m else None
        value = _strip_wrappers(part[m.end() :] if m else part)
        if "=" in value:
            value = _strip_wrappers(value.rsplit("=", 1)[1])
        pm = value.replace("\\pm", "±")
        if pm.count("±") == 1:
            plus = pm[1:] if pm.startswith("±") else pm.replace("±", "+")
            out += [(lhs, plus.strip()), (lhs, pm.replace("±", "-").strip())]
        else:
            out.append((lhs, value))
    return out


def _parts_of(answer: str) -> list[tuple[str | None, str]]:
    parts = _split_parts(answer)
    if parts is None:
        s = _strip_wrappers(answer.replace(_MINUS, "-"))
        pm = s.replace("\\pm", "±")
        m = _LHS_RE.match(pm)
        if pm.count("±") == 1 and (pm.startswith("±") or (m and pm[m.end() :].lstrip().startswith("±"))):
            return _expand_parts([pm])  # "x = ±1": two values
        return [(None, answer)]
    return _expand_parts(parts)


def _match_multi(gold: list[tuple[str | None, str]], pred: list[tuple[str | None, str]]) -> bool:
    """Same number of parts and a one-to-one match (values equal, names equal where both named)."""
    if len(gold) != len(pred) or len(gold) > 24:
        return False
    used = [False] * len(pred)

    def place(i: int) -> bool:
        if i == len(gold):
            return True
        g_name, g_val = gold[i]
        for j, (p_name, p_val) in enumerate(pred):
            if used[j] or (g_name and p_name and g_name != p_name):
                continue
            if _single_match(g_val, p_val):
                used[j] = True
                if place(i + 1):
                    return True
                used[j] = False
        return False

    return place(0)


# ----------------------------------------------------------------------------------------------------
# finding the answer in a text


def _candidate_after(text: str, pos: int) -> tuple[str | None, int]:
    """The finalized candidate in the sentence that starts at `pos`, and where that sentence ends."""
    rest = text[pos : pos + _WINDOW]
    lead_ws = len(rest) - len(rest.lstrip(" \t*_:"))
    rest = rest[lead_ws:]
    end = _SENTENCE_END_RE.search(rest)
    # a "$...$" / "\(...\)" answer may hold "." or ";" inside, and prose may follow it: the math span is
    # the candidate ("$\frac{1}{6}$, so there is a 1 in 6 chance" -> \frac{1}{6})
    math_span = None
    for open_, close_ in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            close = rest.find(close_, len(open_))
            if close > 0:
                math_span = rest[: close + len(close_)]
                if end is None or end.start() < close:
                    end = _SENTENCE_END_RE.search(rest, close + len(close_))
            break
    stop = end.start() if end else len(rest)
    piece = rest[:stop]
    if math_span is not None and piece.strip() != math_span.strip():
        cand = _finalize(math_span)
        if cand is not None:
            return cand, pos + lead_ws + stop
    if end is None and _is_unfinished(piece):
        return None, pos + lead_ws + stop
    return _finalize(piece), pos + lead_ws + stop


def _valid(cand: str | None) -> bool:
    """A candidate that looks like a math answer: a digit, LaTeX, a list, or a short symbolic answer
    ("n", "n!", "2n"); a prose word ("the answer is correct") is not one."""
    if cand is None:
        return False
    if re.search(r"[\d\\]", cand) or _split_parts(cand):
        return True
    return bool(re.fullmatch(r"[A-Za-z]|[-+]?[A-Za-z0-9]{1,3}[!^*/+()_'][\w!^*/+()'-]{0,16}", cand))


def _last(matches: Iterator[re.Match[str]]) -> list[re.Match[str]]:
    """The last few matches: only the last statements can decide the answer (keeps long texts fast)."""
    return list(deque(matches, maxlen=_LAST_MARKERS))


def _boxed_statements(text: str) -> list[_Statement]:
    out = []
    for start, end, content in all_boxed(text)[-_LAST_MARKERS:]:
        cand = _finalize(content, math_ctx=True)
        out.append(_Statement(start, end, cand if cand is not None else ""))
    return out


def _hash_statements(text: str) -> list[_Statement]:
    out = []
    for m in _last(re.finditer(r"####", text)):
        cand, end = _candidate_after(text, m.end())
        out.append(_Statement(m.start(), end, cand or ""))
    return out


def _phrase_statements(text: str) -> list[_Statement]:
    """Answer phrases (see the module docstring), in text order."""
    out: list[_Statement] = []
    for m in _last(_ANSWER_PHRASE_RE.finditer(text)):
        cand, end = _candidate_after(text, m.end())
        if _valid(cand):
            out.append(_Statement(m.start(), end, cand))  # type: ignore[arg-type]
    for m in _last(_REVERSE_ANSWER_RE.finditer(text)):
        cand = _finalize(m.group(1))
        if _valid(cand):
            out.append(_Statement(m.start(), m.end(), cand))  # type: ignore[arg-type]
    out.sort(key=lambda s: (s.end, s.start))
    return out


def _conclusion(text: str, pos: int) -> tuple[str, int] | None:
    """A conclusion sentence's value: "So, 13." / "Therefore, x = 5" / "So he has 10 apples"."""
    rest = text[pos : pos + _WINDOW]
    end = _SENTENCE_END_RE.search(rest)
    stop = end.start() if end else len(rest)
    sentence = rest[:stop]
    if not sentence.strip() or (end is None and _is_unfinished(sentence)):
        return None
    bare = sentence.strip()
    if len(bare) <= BARE_MAX_CHARS and re.match(r"^(?:\$|\\\(|[-+]?\d|[A-Za-z]\s*=)", bare):
        direct = _finalize(bare)
        if _valid(direct):
            return direct, pos + stop  # type: ignore[return-value]  # "So, 13." / "Therefore, x = 5"
    verb = _CONCLUSION_VERB_RE.search(sentence)
    if verb is None:
        return None
    after = sentence[verb.end() :]
    m = re.search(rf"\$[^$]{{1,80}}\$|{_NUMBER}|\\boxed", after)
    if m is None or re.search(r"\b(?:need|needs|to)\s*$", sentence[: verb.start()]):
        return None
    cand = _finalize(after[m.start() :])
    if not _valid(cand):
        return None
    return cand, pos + stop  # type: ignore[return-value]


def _value_statement(text: str) -> _Statement | None:
    """The last value statement or conclusion sentence ("the sum is 8", "Therefore, 13."), if no
    computation follows it (then it was a step of the computation, not its result)."""
    found: list[_Statement] = []
    for m in _last(_VALUE_STATEMENT_RE.finditer(text)):
        cand, end = _candidate_after(text, m.end())
        if _valid(cand):
            found.append(_Statement(m.start(), end, cand))  # type: ignore[arg-type]
    for m in _last(_CONCLUSION_START_RE.finditer(text)):
        st = _conclusion(text, m.end())
        if st is not None:
            found.append(_Statement(m.start(), st[1], st[0]))
    if not found:
        return None
    last = max(found, key=lambda s: (s.end, s.start))
    if _COMPUTATION_RE.search(text, last.end):
        return None
    return last


def _sentences(text: str) -> list[tuple[int, int]]:
    out = []
    start = 0
    for m in _SENTENCE_END_RE.finditer(text):
        out.append((start, m.end()))
        start = m.end()
    if start < len(text):
        out.append((start, len(text)))
    return out


_TRAILING_LATEX_RE = re.compile(
    r"(-?\s*\d*\s*\\(?:[dt]?frac\{[^{}]{1,40}\}\{[^{}]{1,40}\}|sqrt(?:\[\d+\])?\{[^{}]{1,40}\}))"
    r"\s*(?:\$|\\\)|\\\])?\s*[.!]?\s*$"
)


def _last_number(text: str) -> str | None:
    """The last number, unless it is the right operand of an operator ("12 + 1") - then None.

    A power written out at the end ("2^10") is kept whole.
    """
    t = text.replace(_MINUS, "-")
    matches = list(_ANY_NUMBER_RE.finditer(t))
    if not matches:
        return None
    m = matches[-1]
    value = m.group(0)
    before = t[: m.start()].rstrip()
    if before.endswith("{"):  # inside a LaTeX group: the answer is the trailing \frac{}{} / \sqrt{} whole
        latex = _TRAILING_LATEX_RE.search(t)
        return latex.group(1).replace(" ", "") if latex else None
    power = re.search(r"(?<![\d.^])(\d+)\s*\^\s*\{?\s*$", before)
    if power:
        return (
            f"{power.group(1)}^{value}"
            if "{" not in before[power.start() :]
            else f"{power.group(1)}^{{{value}}}"
        )
    if before.endswith("-"):
        operand = before[:-1].rstrip()
        # "x = -4" / "is -4": a sign; "5 - 4" / "2 - -4": a binary minus (an unevaluated expression).
        if operand and (operand[-1].isdigit() or operand[-1] in ")]}" or operand.endswith("-")):
            return None
        value = "-" + value
    elif before.endswith(("+", "*", "/", "×", "÷", "^")) or re.search(r"\\(?:times|cdot|div)$", before):
        return None
    return value


_TRAILING_ASSIGNMENTS_RE = re.compile(
    r"((?:[A-Za-z]\s*=\s*[-+±]?\s*(?:\\frac\{\d+\}\{\d+\}|\d+(?:\.\d+)?(?:/\d+)?)\s*"
    r"(?:,\s*(?:and|or)\s+|,\s*|\s(?:and|or)\s)\s*)+"
    r"[A-Za-z]\s*=\s*[-+±]?\s*(?:\\frac\{\d+\}\{\d+\}|\d+(?:\.\d+)?(?:/\d+)?))\s*\$?\s*[.!]?\s*$"
)


def _is_bare(text: str) -> bool:
    """A whole text that is itself a short answer (the limits of the gold side's `generic_final`)."""
    bare = _strip_wrappers(text.strip())
    return bool(
        bare
        and "\n" not in bare
        and len(bare) <= BARE_MAX_CHARS
        and len(bare.split()) <= BARE_MAX_WORDS
        and not _SENTENCE_END_RE.search(bare)
        and not _is_unfinished(bare)
    )


def _unmarked(text: str) -> str | None:
    """The answer of a text without answer statements (policy 3 of the module docstring)."""
    tail = _TRAILING_ASSIGNMENTS_RE.search(text.replace(_MINUS, "-")[-400:])
    if tail and _split_parts(tail.group(1)):
        return tail.group(1).strip()
    last = _last_number(text)
    if last is None:
        return None
    pos = text.replace(_MINUS, "-").rfind(last.split("^")[-1].strip("{}").lstrip("-"))
    if _CORRECTION_HARD_RE.search(text, max(pos, 0)):
        return None  # "3 + 4 = 7. Wait, that is wrong." retracts the 7
    return last


def _after_correction(text: str, anchor_end: int, depth: int) -> tuple[bool, str | None]:
    """(superseded?, new answer) when a correction cue follows the chosen statement."""
    tail = text[anchor_end:]
    hard = _CORRECTION_HARD_RE.search(tail)
    soft = _CORRECTION_SOFT_RE.search(tail)
    if hard is None and soft is None:
        return False, None
    if _is_unfinished(text, strict=True):
        return True, None  # a correction that was cut off: its answer is unknown
    if hard is not None:
        new = _extract(tail[hard.end() :].lstrip(" \t:,!.-"), depth + 1)
        return True, new if _valid(new) else None
    assert soft is not None
    sub = tail[soft.end() :].lstrip(" \t:,!.-")
    new = _extract_marked(sub, depth + 1)
    if new is None:
        for m in _last(_RESTATE_RE.finditer(sub)):
            cand, _ = _candidate_after(sub, m.end())
            if _valid(cand):
                new = cand
        if new is None:
            return False, None
    return True, new


def _extract_marked(text: str, depth: int) -> str | None:
    statements = _statements(text, _is_unfinished(text, strict=True))
    return statements[-1].candidate if statements else None


def _statements(text: str, unfinished: bool = False) -> list[_Statement]:
    """The answer statements of the strongest tier present, in text order (value statements only in a
    finished text: a cut-off text may have been about to compute on)."""
    strong = _boxed_statements(text) + _hash_statements(text)
    strong.sort(key=lambda s: s.end)
    if strong:
        return strong
    phrases = _phrase_statements(text)
    if phrases or unfinished:
        return phrases
    value = _value_statement(text)
    return [value] if value is not None else []


def _last_fragment(text: str, start: int) -> str:
    """The unfinished last sentence of a text (not before `start`)."""
    tail = text[start:]
    ends = list(_SENTENCE_END_RE.finditer(tail))
    return tail[ends[-1].end() :] if ends else tail


def _extract(text: str, depth: int = 0) -> str | None:
    if depth > 2:
        return None
    unfinished = _is_unfinished(text, strict=True)
    statements = _statements(text, unfinished)
    if statements:
        anchor = statements[-1]
        if not anchor.candidate:
            return None  # the last strong marker holds no answer ("\boxed{12 + 1}", "####" at the end)
        if unfinished and _PENDING_STATEMENT_RE.search(_last_fragment(text, anchor.end)):
            return None  # cut off while stating an answer again ("... The correct answer")
        superseded, new = _after_correction(text, anchor.end, depth)
        if superseded:
            return new
        return anchor.candidate
    if _is_bare(text):
        return _finalize(text.strip())  # "-4", "2^(n-1)", "x = 1 or x = -2", "No"; "5 - 4" gives None
    if unfinished:
        return None
    return _unmarked(text)


def extract_answer(text: str) -> str | None:
    """The final answer in a model's text, or None if it has none (policy: the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text[-MAX_TEXT_CHARS:].replace(_MINUS, "-").replace("\u00a0", " ")
    text = _CALCULATOR_RE.sub("", text)  # GSM8K calculator annotations "<<48/2=24>>" are not text
    try:
        return _extract(text)
    except UnclosedBox:
        return None


# ----------------------------------------------------------------------------------------------------
# comparing two answers


def _as_decimal(s: str) -> Decimal | None:
    t = _strip_wrappers(s.replace(_MINUS, "-")).replace(" ", "")
    t = re.sub(r"^\\\$|^\$", "", t)
    if t.endswith(("\\%", "%")):
        t = t.rstrip("%").rstrip("\\")
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


def _too_hard(s: str) -> bool:
    """Inputs that could stall sympy: long, deeply nested, huge powers or factorials."""
    if len(s) > MAX_ANSWER_CHARS:
        return True
    depth = 0
    for c in s:
        if c in "{([":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return True
        elif c in "})]":
            depth -= 1
    for m in re.finditer(r"\^\s*\{?\s*(\d+)", s):
        if len(m.group(1)) > 6 or int(m.group(1)) > MAX_EXPONENT:
            return True
    if re.search(r"\^\s*\{?[^}]*\^", s):
        return True  # a power tower
    for m in re.finditer(r"(\d+)\s*!", s):
        if len(m.group(1)) > 6 or int(m.group(1)) > MAX_FACTORIAL:
            return True
    return False


_LATEX_TEXT_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{[^{}]*\}")
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")


def _significant(s: str) -> tuple[str, set[str], set[str]]:
    """Digits in order, prose words and single-letter variables of a candidate (LaTeX commands and
    \\text{} dropped) - what a parse must account for."""
    t = _LATEX_TEXT_RE.sub(" ", s)
    t = _LATEX_CMD_RE.sub(" ", t)
    digits = re.sub(r"\D", "", t)
    words = {w.lower() for w in re.findall(r"[A-Za-z]{2,}", t)} - {"and", "or"}
    letters = set(re.findall(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", t))
    return digits, words, letters


def _consumed(src: str, parsed: list) -> bool:
    """Did math-verify's parse read the whole candidate (not "7" of "7 apples", not 2 of 2^floor(n/2))?"""
    if not parsed:
        return False
    matched = parsed[-1] if isinstance(parsed[-1], str) else None
    digits, words, letters = _significant(src)
    if matched is not None:
        m_digits, m_words, _ = _significant(matched)
        if not words <= m_words:
            return False  # "7 apples" read as 7
        # a number dropped from the candidate; plain values may be re-rendered (0.5 -> \frac{1}{2})
        simple = _SIMPLE_VALUE_RE.match(re.sub(r"\\?%$", "", src.replace(" ", "")))
        if not simple and "." not in src and len(m_digits) < len(digits):
            return False
    if re.search(r"\d\s+\.?\d", src) and not re.search(r"[-+*/^=,&]|\\[a-z]", src):
        return False  # "1 2": two numbers side by side, which math-verify adds up
    expr = parsed[0]
    try:
        symbols = {str(x) for x in getattr(expr, "free_symbols", set())}
        if isinstance(expr, (set, frozenset, list, tuple)):
            for e in expr:
                symbols |= {str(x) for x in getattr(e, "free_symbols", set())}
    except Exception:  # noqa: BLE001 - an exotic sympy object: be conservative
        return False
    missing = {c for c in letters if c not in symbols and c.lower() not in symbols} - {"e", "i", "E", "I"}
    if missing:
        return False
    # a number the source never wrote (1 2 -> 3) means the parse combined or invented something
    return not digits or bool(re.sub(r"\D", "", str(expr)))


def _math_verify(gold: str, pred: str) -> bool | None:
    """math-verify's verdict, or None if it cannot parse either side WHOLE, or fails."""
    g_src, p_src = _strip_wrappers(gold), _strip_wrappers(pred)
    if _too_hard(g_src) or _too_hard(p_src):
        return None
    from math_verify import parse, verify  # deferred: sympy import cost only where grading runs

    # signal.alarm timeouts only work in the main thread; elsewhere run without (inputs are bounded).
    main = threading.current_thread() is threading.main_thread()
    limit = MATH_VERIFY_TIMEOUT_S if main else None
    try:
        g = parse(f"${g_src}$", parsing_timeout=limit)
        p = parse(f"${p_src}$", parsing_timeout=limit)
        if not g or not p or not _consumed(g_src, g) or not _consumed(p_src, p):
            return None
        return bool(verify(g, p, timeout_seconds=limit))
    except Exception as e:  # noqa: BLE001 - math-verify/sympy raise almost anything on odd input
        log.debug("math-verify failed on gold=%r pred=%r: %s", gold, pred, e)
        return None


def _strip_lhs(s: str) -> str:
    """A single named value compared with a bare one: "x = 5" -> "5"."""
    m = _LHS_RE.match(_strip_wrappers(s))
    return _strip_wrappers(s)[m.end() :] if m else s


def _single_match(gold: str, pred: str) -> bool:
    gold, pred = _strip_lhs(gold), _strip_lhs(pred)
    gd, pd = _as_decimal(gold), _as_decimal(pred)
    if gd is not None and pd is not None:
        return gd == pd
    verdict = _math_verify(gold, pred)
    if verdict:
        return True
    return _normalize(gold) == _normalize(pred)


def answers_match(gold: str, pred: str) -> bool:
    """Compare a gold final answer with an extracted one (multi-part aware); never raises."""
    try:
        # the gold is read like a candidate: "2 inequalities" -> 2, "x = 5" -> 5 (lists kept whole)
        gold = _finalize(gold, math_ctx=True) or gold
        g_parts, p_parts = _parts_of(gold), _parts_of(pred)
        if len(g_parts) > 1 or len(p_parts) > 1:
            if _match_multi(g_parts, p_parts):
                return True
            # one side may be a braced/bracketed set that math-verify reads as a whole ("\{1,-2\}")
            if len(g_parts) == 1 or len(p_parts) == 1:
                single = g_parts[0][1] if len(g_parts) == 1 else p_parts[0][1]
                if not re.match(r"^\s*\\?\{|^\s*\\left\\\{", _strip_wrappers(single)):
                    return False
                return bool(_math_verify(gold, pred))
            return False
        return _single_match(gold, pred)
    except Exception as e:  # noqa: BLE001 - grading must never crash a worker
        log.warning("answer comparison failed (gold=%r, pred=%r): %s", gold, pred, e)
        return False


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
