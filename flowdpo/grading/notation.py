"""Unicode and markup notation written as the ASCII / LaTeX the grader reads: a model (or a dataset) that writes
"5²", "3½", "2√3", "π/2", "x ≤ 7", "１８" or "<b>18</b>" states the same answer as "5^2", "3 1/2", "2\\sqrt{3}",
"\\pi/2", "x \\le 7", "18" and "18". Applied to every text and every gold before anything else reads them."""

from __future__ import annotations

import re

from flowdpo.grading.rules import MINUS

_SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻"
_SUPERSCRIPT_RE = re.compile(f"[{_SUPERSCRIPT}]+")
_FROM_SUPERSCRIPT = str.maketrans(_SUPERSCRIPT, "0123456789+-")
_VULGAR = {
    "½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5", "⅗": "3/5",
    "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅐": "1/7", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8", "⅞": "7/8",
    "⅑": "1/9", "⅒": "1/10",
}  # fmt: skip
_VULGAR_RE = re.compile(f"(\\d?)([{''.join(_VULGAR)}])")
# A root sign before what it applies to: a number, a letter, a bracketed group.
_ROOT_RE = re.compile(r"([√∛∜])\s*(\d+(?:\.\d+)?|[A-Za-z]|\([^()]{1,80}\)|\{[^{}]{1,80}\})")
_SYMBOLS = {
    "π": "\\pi ", "∞": "\\infty ", "≤": " \\le ", "≥": " \\ge ", "≠": " \\neq ", "÷": " \\div ", "·": " \\cdot ",
    "⩽": " \\le ", "⩾": " \\ge ", "∪": " \\cup ", "∩": " \\cap ", MINUS: "-", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2007": " ",
}  # fmt: skip
_SYMBOLS_RE = re.compile("|".join(map(re.escape, _SYMBOLS)))
_FULL_WIDTH = str.maketrans("０１２３４５６７８９．，＋－＝", "0123456789.,+-=")
# Markup a chat model may wrap an answer in: <b>18</b>, <answer>18</answer>; a superscript tag is a power.
_SUP_TAG_RE = re.compile(r"<sup>\s*([^<>]{1,20}?)\s*</sup>", re.IGNORECASE)
_TAG_RE = re.compile(r"</?(?:b|i|u|em|strong|answer|final_answer|final|result|solution|p|span|code|sub)\s*>", re.IGNORECASE)
_FAST_CHECK_RE = re.compile("[^\\x00-\\x7f]|<")  # most texts are ASCII without markup: nothing to do


def _power(m: re.Match[str]) -> str:
    exponent = m.group(0).translate(_FROM_SUPERSCRIPT)
    return f"^{exponent}" if len(exponent) == 1 else f"^{{{exponent}}}"


def _root(m: re.Match[str]) -> str:
    index = {"√": "", "∛": "[3]", "∜": "[4]"}[m.group(1)]
    body = m.group(2)
    if body[0] in "({":
        body = body[1:-1]
    return f"\\sqrt{index}{{{body}}}"


def _vulgar(m: re.Match[str]) -> str:
    whole = m.group(1)
    return f"{whole} {_VULGAR[m.group(2)]}" if whole else _VULGAR[m.group(2)]


def plain_notation(text: str) -> str:
    """`text` with unicode math notation and answer markup written the way the rest of the grader reads it."""
    if not _FAST_CHECK_RE.search(text):
        return text
    t = text.translate(_FULL_WIDTH)
    t = _SUP_TAG_RE.sub(lambda m: f"^{{{m.group(1)}}}" if len(m.group(1)) > 1 else f"^{m.group(1)}", t)
    t = _TAG_RE.sub("", t)
    t = _SUPERSCRIPT_RE.sub(_power, t)
    t = _VULGAR_RE.sub(_vulgar, t)
    t = _ROOT_RE.sub(_root, t)
    return _SYMBOLS_RE.sub(lambda m: _SYMBOLS[m.group(0)], t)
