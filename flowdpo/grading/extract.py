"""Which answer a text gives: statements (boxed, ####, answer phrases, value statements), corrections, unmarked text."""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Iterator

from flowdpo.data.answers import UnclosedBox, all_boxed
from flowdpo.grading.candidates import (
    NO_SINGLE_ANSWER,
    PENDING_STATEMENT_RE,
    Statement,
    finalize,
    is_unfinished,
    split_parts,
    strip_wrappers,
)
from flowdpo.grading.notation import plain_notation
from flowdpo.grading.number_words import scaled_from
from flowdpo.grading.rules import (
    ANSWER_PHRASE_RE,
    ANY_NUMBER_RE,
    BARE_MAX_CHARS,
    BARE_MAX_WORDS,
    CALCULATOR_RE,
    CATEGORY_WORDS,
    COMPUTATION_RE,
    CONCLUSION_START_RE,
    CONCLUSION_VERB_RE,
    CORRECTION_HARD_RE,
    CORRECTION_SOFT_RE,
    LAST_MARKERS,
    MAX_TEXT_CHARS,
    MINUS,
    NUMBER,
    RESTATE_RE,
    REVERSE_ANSWER_RE,
    SENTENCE_END_RE,
    VALUE_STATEMENT_RE,
    WINDOW,
)


def _closing(text: str, delimiter: str, start: int) -> int:
    """Where a math span's closing delimiter is, skipping escaped dollars ("$\\$18$" holds a currency sign)."""
    at = text.find(delimiter, start)
    while at > 0 and delimiter.startswith("$") and text[at - 1] == "\\":
        at = text.find(delimiter, at + 1)
    return at


def _candidate_after(text: str, pos: int) -> tuple[str | None, int]:
    """The finalized candidate in the sentence that starts at `pos`, and where that sentence ends."""
    rest = text[pos : pos + WINDOW]
    lead_ws = len(rest) - len(rest.lstrip(" \t*_:"))
    rest = rest[lead_ws:]
    end = SENTENCE_END_RE.search(rest)
    # a "$...$" / "\(...\)" answer may hold "." or ";" inside, and prose may follow it: the math span is
    # the candidate ("$\frac{1}{6}$, so there is a 1 in 6 chance" -> \frac{1}{6})
    math_span = None
    for open_, close_ in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            close = _closing(rest, close_, len(open_))
            if close > 0:
                math_span = rest[: close + len(close_)]
                if end is None or end.start() < close:
                    end = SENTENCE_END_RE.search(rest, close + len(close_))
            break
    stop = end.start() if end else len(rest)
    piece = rest[:stop]
    if math_span is not None and piece.strip() != math_span.strip():
        cand = finalize(math_span)
        if cand is not None:
            return cand, pos + lead_ws + stop
    if end is None and is_unfinished(piece):
        return None, pos + lead_ws + stop
    return finalize(piece), pos + lead_ws + stop


def _valid(cand: str | None) -> bool:
    """A candidate that looks like a math answer: a digit, LaTeX, a list, a short symbolic answer ("n", "n!",
    "2n") or a one-word categorical answer ("yes", "even", "Monday"); a prose word ("the answer is correct")
    is not one."""
    if cand is None:
        return False
    if re.search(r"[\d\\]", cand) or split_parts(cand) or cand.lower() in CATEGORY_WORDS:
        return True
    return bool(re.fullmatch(r"[A-Za-z]|[-+]?[A-Za-z0-9]{1,3}[!^*/+()_'][\w!^*/+()'-]{0,16}", cand))


def _states(cand: str | None) -> bool:
    """A statement's candidate counts: an answer, or NO_SINGLE_ANSWER (a hedge, which ends the search too)."""
    return cand == NO_SINGLE_ANSWER or _valid(cand)


def _last(matches: Iterator[re.Match[str]]) -> list[re.Match[str]]:
    """The last few matches: only the last statements can decide the answer (keeps long texts fast)."""
    return list(deque(matches, maxlen=LAST_MARKERS))


def _boxed_statements(text: str) -> list[Statement]:
    out = []
    for start, end, content in all_boxed(text)[-LAST_MARKERS:]:
        cand = finalize(content, math_ctx=True)
        out.append(Statement(start, end, cand if cand is not None else ""))
    return out


def _hash_statements(text: str) -> list[Statement]:
    out = []
    for m in _last(re.finditer(r"####", text)):
        cand, end = _candidate_after(text, m.end())
        out.append(Statement(m.start(), end, cand or ""))
    return out


def _phrase_statements(text: str) -> list[Statement]:
    """Answer phrases (see the module docstring), in text order."""
    out: list[Statement] = []
    for m in _last(ANSWER_PHRASE_RE.finditer(text)):
        cand, end = _candidate_after(text, m.end())
        if cand and cand.lower() in CATEGORY_WORDS and ANY_NUMBER_RE.search(text, end):
            continue  # "Is 15 divisible by 4? The answer is no. ... so 4 boxes": a sub-question's answer
        if _states(cand):
            out.append(Statement(m.start(), end, cand))  # type: ignore[arg-type]
    for m in _last(_ANSWER_LABEL_RE.finditer(text)):
        if _CHOICE_LABEL_RE.search(text, m.end()):
            continue  # "A: 12\nB: 15": choices listed, not an answer
        cand = finalize(m.group(1))
        if _valid(cand) and not _prose_with_number(cand):  # type: ignore[arg-type]
            out.append(Statement(m.start(), m.end(), cand))  # type: ignore[arg-type]
    for m in _last(REVERSE_ANSWER_RE.finditer(text)):
        cand = finalize(m.group(1))
        if _valid(cand):
            out.append(Statement(m.start(), m.end(), cand))  # type: ignore[arg-type]
    out.sort(key=lambda s: (s.end, s.start))
    return out


# "A: 18" on a line of its own (a question-and-answer layout): an answer label, like "Answer: 18". A line that
# goes on after the value ("A: 16 - 3 = 13 eggs. She sells ...") is the start of a solution, not an answer.
_ANSWER_LABEL_RE = re.compile(r"^[ \t]*(?:\*\*|__)?A(?:\*\*|__)?[ \t]*:[ \t]*(\S[^\n]{0,39}?)[ \t]*$", re.MULTILINE)
_CHOICE_LABEL_RE = re.compile(r"^[ \t]*(?:\*\*|__)?\(?B\)?(?:\*\*|__)?[ \t]*[:.)]", re.MULTILINE)


def _conclusion(text: str, pos: int) -> tuple[str, int] | None:
    """A conclusion sentence's value: "So, 13." / "Therefore, x = 5" / "So he has 10 apples"."""
    rest = text[pos : pos + WINDOW]
    end = SENTENCE_END_RE.search(rest)
    stop = end.start() if end else len(rest)
    sentence = rest[:stop]
    if not sentence.strip() or (end is None and is_unfinished(sentence)):
        return None
    bare = sentence.strip()
    if len(bare) <= BARE_MAX_CHARS and re.match(r"^(?:\$|\\\(|[-+]?\d|[A-Za-z]\s*=)", bare):
        direct = finalize(bare)
        if _states(direct):
            return direct, pos + stop  # type: ignore[return-value]  # "So, 13." / "Therefore, x = 5"
    verb = CONCLUSION_VERB_RE.search(sentence)
    if verb is None:
        return None
    after = sentence[verb.end() :]
    m = re.search(rf"\$[^$]{{1,80}}\$|{NUMBER}|\\boxed", after)
    if m is None or re.search(r"\b(?:need|needs|to)\s*$", sentence[: verb.start()]):
        return None
    cand = finalize(after[m.start() :])
    if not _states(cand):
        return None
    return cand, pos + stop  # type: ignore[return-value]


_INNER_COPULA_RE = re.compile(r"\b(?:is|are|was|were|equals|is equal to)\s+")


def _after_inner_copula(cand: str) -> str | None:
    """A value statement's candidate that is itself prose with a copula ("divided by 5 is 2", after "The
    remainder when 17 is"): the value after its last copula, if that is an answer."""
    inner = list(_INNER_COPULA_RE.finditer(cand))
    if not inner:
        return cand
    value = finalize(cand[inner[-1].end() :])
    return value if _valid(value) and not _prose_with_number(value) else cand  # type: ignore[arg-type]


def _value_statement(text: str) -> Statement | None:
    """The last value statement or conclusion sentence ("the sum is 8", "Therefore, 13."), if no
    computation follows it (then it was a step of the computation, not its result)."""
    found: list[Statement] = []
    for m in _last(VALUE_STATEMENT_RE.finditer(text)):
        cand, end = _candidate_after(text, m.end())
        if cand and _prose_with_number(cand):
            cand = _after_inner_copula(cand)  # "The remainder when 17 is divided by 5 is 2": the last "is"
        if _states(cand):
            found.append(Statement(m.start(), end, cand))  # type: ignore[arg-type]
    for m in _last(CONCLUSION_START_RE.finditer(text)):
        st = _conclusion(text, m.end())
        if st is not None:
            found.append(Statement(m.start(), st[1], st[0]))
    if not found:
        return None
    last = max(found, key=lambda s: (s.end, s.start))
    if COMPUTATION_RE.search(text, last.end):
        return None
    return last


def _sentences(text: str) -> list[tuple[int, int]]:
    out = []
    start = 0
    for m in SENTENCE_END_RE.finditer(text):
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
    t = text.replace(MINUS, "-")
    matches = list(ANY_NUMBER_RE.finditer(t))
    if not matches:
        return None
    m = matches[-1]
    value = m.group(0)
    before = t[: m.start()].rstrip()
    pair = re.search(r"(?<![\d.:])(\d+):$", before)
    if pair:  # "3:45", "2:3": a time or a ratio is one value
        return f"{pair.group(1)}:{value}"
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
    head = _SCALED_HEAD_RE.search(t, max(0, m.start() - 80), m.start())
    if head:  # "... earned 12 thousand 500": the last number ends a scaled one
        whole = scaled_from(head.group(1), t, head.start(1) + len(head.group(1)))
        if whole is not None and whole[1] == m.end():
            return whole[0]
    scale = scaled_from(value, t, m.end())
    return scale[0] if scale else value  # "... earned 1.5 million"


# A number and its scale word before the last number ("12 thousand 500", "2 million 300 thousand 5").
_SCALED_HEAD_RE = re.compile(
    r"(?<![\d.,])(\d+(?:\.\d+)?)\s+(?:(?:hundred|thousand|million|billion|trillion)\s+(?:and\s+)?(?:\d{1,3}\s+)?)+$",
    re.IGNORECASE,
)


_TRAILING_ASSIGNMENTS_RE = re.compile(
    r"((?:[A-Za-z]\s*=\s*[-+±]?\s*(?:\\frac\{\d+\}\{\d+\}|\d+(?:\.\d+)?(?:/\d+)?)\s*"
    r"(?:,\s*(?:and|or)\s+|,\s*|\s(?:and|or)\s)\s*)+"
    r"[A-Za-z]\s*=\s*[-+±]?\s*(?:\\frac\{\d+\}\{\d+\}|\d+(?:\.\d+)?(?:/\d+)?))\s*\$?\s*[.!]?\s*$"
)


def _is_bare(text: str) -> bool:
    """A whole text that is itself a short answer (the limits of the gold side's `generic_final`)."""
    bare = strip_wrappers(text.strip())
    return bool(
        bare
        and "\n" not in bare
        and len(bare) <= BARE_MAX_CHARS
        and len(bare.split()) <= BARE_MAX_WORDS
        and not SENTENCE_END_RE.search(bare)
        and not is_unfinished(bare)
    )


# A word standing alone between spaces ("She pays $12.50"); not a function or a product of variables
# ("sqrt(2)", "sum_(k=1)^n", "-xy-yz").
_WORD_RE = re.compile(r"(?<!\S)[A-Za-z]{2,}(?=[\s.,;:!?]|$)")
# Words an answer expression may hold ("x = 1 or x = -2", "3 mod 4", "sin x", "no solution").
_MATH_WORDS = frozenset(
    {"or", "and", "mod", "pi", "inf", "infinity", "undefined", "dne", "none", "no", "yes", "true", "false"}
    | {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp"}
)


def _prose_with_number(cand: str) -> bool:
    """A candidate that is prose around a number ("She pays $12.50") rather than an answer expression."""
    words = [w for w in _WORD_RE.findall(cand) if w.lower() not in _MATH_WORDS]
    return bool(words) and ANY_NUMBER_RE.search(cand) is not None


def _unmarked(text: str) -> str | None:
    """The answer of a text without answer statements (policy 3 of the module docstring)."""
    tail = _TRAILING_ASSIGNMENTS_RE.search(text.replace(MINUS, "-")[-400:])
    if tail and split_parts(tail.group(1)):
        return tail.group(1).strip()
    last = _last_number(text)
    if last is None:
        return None
    pos = text.replace(MINUS, "-").rfind(last.split("^")[-1].strip("{}").lstrip("-"))
    if CORRECTION_HARD_RE.search(text, max(pos, 0)):
        return None  # "3 + 4 = 7. Wait, that is wrong." retracts the 7
    return last


def _after_correction(text: str, anchor_end: int, depth: int) -> tuple[bool, str | None]:
    """(superseded?, new answer) when a correction cue follows the chosen statement."""
    tail = text[anchor_end:]
    hard = CORRECTION_HARD_RE.search(tail)
    soft = CORRECTION_SOFT_RE.search(tail)
    if hard is None and soft is None:
        return False, None
    if is_unfinished(text, strict=True):
        return True, None  # a correction that was cut off: its answer is unknown
    if hard is not None:
        new = _extract(tail[hard.end() :].lstrip(" \t:,!.-"), depth + 1)
        return True, new if _valid(new) else None
    assert soft is not None
    sub = tail[soft.end() :].lstrip(" \t:,!.-")
    new = _extract_marked(sub, depth + 1)
    if new is None:
        for m in _last(RESTATE_RE.finditer(sub)):
            cand, _ = _candidate_after(sub, m.end())
            if _valid(cand):
                new = cand
        if new is None:
            return False, None
    return True, new


def _extract_marked(text: str, depth: int) -> str | None:
    statements = _statements(text, is_unfinished(text, strict=True))
    return statements[-1].candidate if statements else None


def _statements(text: str, unfinished: bool = False) -> list[Statement]:
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


# Between two answer statements, words that offer the second in place of the first: "\boxed{5} or \boxed{6}",
# "The answer is 6. Or maybe 7." (a correction cue is not one: "6. Wait, it is 7" is policy 2).
_OFFERED_INSTEAD_RE = re.compile(
    r"^[\s$.,;:)]*(?:or|maybe|perhaps|possibly|alternatively)\b(?:\s+(?:maybe|perhaps|possibly))?[\s$,:(]*"
    r"(?:the\s+answer\s+(?:is|could\s+be|might\s+be)\s*)?[\s$:]*$",
    re.IGNORECASE,
)


def _offered_instead(text: str, first: Statement, second: Statement) -> bool:
    """The second statement offers another answer in place of the first (a hedge)."""
    if not first.candidate or first.candidate == second.candidate or second.start < first.end:
        return False
    return _OFFERED_INSTEAD_RE.match(text[first.end : second.start]) is not None


def _last_fragment(text: str, start: int) -> str:
    """The unfinished last sentence of a text (not before `start`)."""
    tail = text[start:]
    ends = list(SENTENCE_END_RE.finditer(tail))
    return tail[ends[-1].end() :] if ends else tail


def _extract(text: str, depth: int = 0) -> str | None:
    if depth > 2:
        return None
    unfinished = is_unfinished(text, strict=True)
    statements = _statements(text, unfinished)
    if statements:
        anchor = statements[-1]
        if not anchor.candidate:
            return None  # the last strong marker holds no answer ("\boxed{12 + 1}", "####" at the end)
        if len(statements) > 1 and _offered_instead(text, statements[-2], anchor):
            return None  # "\boxed{5} or \boxed{6}": a hedge between two answers, not one answer
        if unfinished and PENDING_STATEMENT_RE.search(_last_fragment(text, anchor.end)):
            return None  # cut off while stating an answer again ("... The correct answer")
        superseded, new = _after_correction(text, anchor.end, depth)
        if superseded:
            return new
        return anchor.candidate
    if _is_bare(text):
        cand = finalize(text.strip())  # "-4", "2^(n-1)", "x = 1 or x = -2", "No"; "5 - 4" gives None
        if cand is None or not _prose_with_number(cand):
            return cand or None
        # "She pays $12.50.": a short sentence around a number, not an answer expression: read it unmarked
    if unfinished:
        return None
    return _unmarked(text)


# A line that starts a new question ("Question: ...", "Q: ...", "Problem 2:"), as a model writes when it goes on
# past its answer imitating a few-shot prompt.
_NEW_QUESTION_RE = re.compile(r"^[ \t#*]*(?:question|q|problem)(?:\s*\d+)?\s*[:.]", re.IGNORECASE | re.MULTILINE)


def _before_a_new_question(text: str) -> str:
    """The text before a new question that follows an answer statement (the answer to ITS question is not the
    answer); the whole text when no such question follows one."""
    for m in itertools.islice(_NEW_QUESTION_RE.finditer(text), LAST_MARKERS):
        head = text[: m.start()]
        if head.strip() and (_boxed_statements(head) or _hash_statements(head) or _phrase_statements(head)):
            return head
    return text


def extract_answer(text: str) -> str | None:
    """The final answer in a model's text, or None if it has none (policy: the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = plain_notation(text[-MAX_TEXT_CHARS:])  # "5²", "3½", "√2", "１８", "<b>18</b>", a unicode minus
    text = CALCULATOR_RE.sub("", text)  # GSM8K calculator annotations "<<48/2=24>>" are not text
    try:
        return _extract(_before_a_new_question(text)) or None  # NO_SINGLE_ANSWER is no answer
    except UnclosedBox:
        return None


# ----------------------------------------------------------------------------------------------------
# comparing two answers
