"""Pure-text helpers that find the gold FINAL answer inside a dataset's worked solution.

They are shared by the dataset loaders (gold side) and by `flowdpo.grading` (prediction side), so
they import nothing heavy: `flowdpo.grading` must stay cheap to import in rollout workers.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")


class UnclosedBox(ValueError):
    """The last `\\boxed{` has no matching `}`: the text was cut off inside the answer."""


def _box_content(text: str, i: int) -> tuple[str, int] | None:
    """The box argument starting at `i` (just after `\\boxed`) and the index after it; None if unclosed."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        token = re.match(r"[^\s$]+", text[i:])
        return (token.group(0), i + token.end()) if token else ("", i)
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return None


def all_boxed(text: str) -> list[tuple[int, int, str]]:
    """Every `\\boxed{...}` / `\\fbox{...}` as (start, end, content), in order; boxes nested inside an earlier
    box's content are not listed separately. Raises `UnclosedBox` when the LAST box is unclosed."""
    found: list[tuple[int, int, str]] = []
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return found
        got = _box_content(text, m.end())
        if got is None:
            raise UnclosedBox("unclosed \\boxed{")
        content, end = got
        found.append((m.start(), end, content))
        pos = max(end, m.end())


def last_boxed(text: str) -> str | None:
    """Content of the LAST `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or None if there is none.

    `\\boxed 5` (no braces, seen in MATH) yields the next whitespace-delimited token. An unclosed last
    box raises `UnclosedBox`, because a truncated answer must not be mistaken for a finished one.
    """
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    j = starts[-1]
    while j < len(text) and text[j] == " ":
        j += 1
    got = _box_content(text, j)
    if got is None:
        raise UnclosedBox("\\boxed at end of text" if j >= len(text) else "unclosed \\boxed{")
    braced = text[j] == "{"
    return got[0] if braced or got[0] else None


def gsm8k_final(answer_text: str) -> str | None:
    """GSM8K: the number after the last `####`, thousands separators and `$` removed ("1,234" -> "1234")."""
    if "####" not in answer_text:
        return None
    tail = answer_text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    tail = tail.replace(",", "").replace("$", "").strip().rstrip(".").strip()
    return tail or None


def math_final(solution: str) -> str | None:
    """MATH: the content of the last `\\boxed{}`/`\\fbox{}` in the solution (None if absent/unclosed)."""
    try:
        boxed = last_boxed(solution)
    except UnclosedBox:
        return None
    if boxed is None:
        return None
    boxed = boxed.strip()
    return boxed or None


def metamath_final(response: str) -> str | None:
    """MetaMathQA: the text after the last "The answer is:" (a trailing period is dropped)."""
    matches = list(re.finditer(r"The answer is\s*:?", response, re.IGNORECASE))
    if not matches:
        return None
    tail = response[matches[-1].end() :].strip()
    tail = tail.rstrip().rstrip(".").strip()
    return tail or None


def clean_gsm8k_solution(answer_text: str) -> str:
    """GSM8K worked solution without the `<<48/2=24>>` calculator annotations (noise for SFT targets)."""
    return _CALCULATOR_RE.sub("", answer_text).strip()
