"""Does an extracted answer equal the gold one: exact decimals, then math-verify on whole parses, then strings; multi-part answers as sets."""

from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from flowdpo.grading.candidates import LHS_RE, expand_parts, finalize, split_parts, strip_wrappers
from flowdpo.grading.notation import plain_notation
from flowdpo.grading.quantities import INFINITY, Interval, as_intervals, compound_quantity
from flowdpo.grading.rules import (
    CLOCK_RE,
    E_NOTATION_RE,
    MATH_VERIFY_TIMEOUT_S,
    MAX_ANSWER_CHARS,
    MAX_BRACE_DEPTH,
    MAX_EXPONENT,
    MAX_FACTORIAL,
    MINUS,
    PLAIN_NUMBER_RE,
    SIMPLE_VALUE_RE,
    log,
)


def _parts_of(answer: str) -> list[tuple[str | None, str]]:
    parts = split_parts(answer)
    if parts is None:
        s = strip_wrappers(answer.replace(MINUS, "-"))
        pm = s.replace("\\pm", "±")
        m = LHS_RE.match(pm)
        if pm.count("±") == 1 and (pm.startswith("±") or (m and pm[m.end() :].lstrip().startswith("±"))):
            return expand_parts([pm])  # "x = ±1": two values
        return [(None, answer)]
    return expand_parts(parts)


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


def _as_decimal(s: str) -> Decimal | None:
    t = strip_wrappers(s.replace(MINUS, "-")).replace(" ", "")
    t = re.sub(r"^\\\$|^\$", "", t)
    if t.endswith(("\\%", "%")):
        t = t.rstrip("%").rstrip("\\")
    sci = E_NOTATION_RE.match(t)  # "1.5e6", "2E-3": a plain number times a power of ten
    if sci:
        t, exponent = sci.group(1), int(sci.group(2))
    elif not PLAIN_NUMBER_RE.match(t):
        return None
    try:
        value = Decimal(t.replace(",", ""))
        return value.scaleb(exponent) if sci else value
    except InvalidOperation:
        return None


def _is_percent(s: str) -> bool:
    return strip_wrappers(s).rstrip().endswith("%")


def _normalize(s: str) -> str:
    """Loose string form for the fallback comparison (no math-verify)."""
    t = strip_wrappers(s.replace(MINUS, "-"))
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
        simple = SIMPLE_VALUE_RE.match(re.sub(r"\\?%$", "", src.replace(" ", "")))
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
    g_src, p_src = strip_wrappers(gold), strip_wrappers(pred)
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
    m = LHS_RE.match(strip_wrappers(s))
    return strip_wrappers(s)[m.end() :] if m else s


_COLON_VALUE_RE = re.compile(r"^(\d+)\s*:\s*(\d+)(?:\s*:\s*(\d+))?$")


def _colon_match(gold: str, pred: str) -> bool | None:
    """Times and ratios ("3:45", "2:3"): two times are equal as written; otherwise as ratios (4:6 = 2:3).
    None when either side is not such a value."""
    g, p = strip_wrappers(gold).replace(" ", ""), strip_wrappers(pred).replace(" ", "")
    gm, pm = _COLON_VALUE_RE.match(g), _COLON_VALUE_RE.match(p)
    if not gm or not pm:
        return None
    gv = [int(x) for x in gm.groups() if x is not None]
    pv = [int(x) for x in pm.groups() if x is not None]
    if CLOCK_RE.match(g) and CLOCK_RE.match(p) or len(gv) != len(pv):
        return gv == pv
    if gv[1] == 0 or pv[1] == 0 or len(gv) == 3:
        return gv == pv
    return gv[0] * pv[1] == pv[0] * gv[1]


# A repeating decimal: "0.\\overline{3}", "1.2\\overline{36}", "0.(3)" (the digits in brackets repeat).
_REPEATING_RE = re.compile(r"^([-+]?)(\d*)\.(\d*)(?:\\overline\{(\d{1,12})\}|\\dot\{(\d)\}|\((\d{1,12})\))$")


def _repeating_as_fraction(s: str) -> str:
    """A repeating decimal as the exact fraction it names ("0.\\overline{3}" -> "1/3"); anything else unchanged."""
    m = _REPEATING_RE.match(strip_wrappers(s).replace(" ", ""))
    if not m or len(m.group(3)) > 12:
        return s
    sign, whole, fixed = m.group(1), m.group(2) or "0", m.group(3)
    cycle = m.group(4) or m.group(5) or m.group(6)
    value = Fraction(int(whole + fixed + cycle) - int(whole + fixed), 10 ** len(fixed) * (10 ** len(cycle) - 1))
    value = -value if sign == "-" else value
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def _compound_match(gold: str, pred: str) -> bool | None:
    """A compound quantity ("2 hours and 30 minutes") equals a plain number in any unit it names (2.5 or 150)
    and another compound quantity of the same measure and total. None when neither side is one."""
    g, p = compound_quantity(strip_wrappers(gold)), compound_quantity(strip_wrappers(pred))
    if g is None and p is None:
        return None
    if g is not None and p is not None:
        return g.measure == p.measure and g.total == p.total
    compound, plain = (g, pred) if g is not None else (p, gold)
    value = _as_decimal(plain)
    return value is not None and Fraction(value) in compound.values  # type: ignore[union-attr]


def _interval_match(gold: str, pred: str) -> bool | None:
    """An inequality in one variable and an interval (or another inequality) name the same set: "2 \\le x < 5"
    is [2, 5), "x < 1 or x > 2" is (-\\infty, 1) \\cup (2, \\infty). None unless one side is an inequality and
    both are unions of intervals (two bracketed pairs are tuples or intervals, compared elsewhere)."""
    g, p = as_intervals(strip_wrappers(gold)), as_intervals(strip_wrappers(pred))
    if g is None or p is None or not (g[1] or p[1]) or len(g[0]) != len(p[0]):
        return None

    def same(a: Interval, b: Interval) -> bool:
        return a[1] == b[1] and a[3] == b[3] and _same_end(a[0], b[0]) and _same_end(a[2], b[2])

    left = list(p[0])
    for piece in g[0]:
        hit = next((i for i, q in enumerate(left) if same(piece, q)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _same_end(a: str, b: str) -> bool:
    if INFINITY in (a.lstrip("-"), b.lstrip("-")):
        return a == b
    return _single_match(a, b)


def _single_match(gold: str, pred: str) -> bool:
    interval = _interval_match(gold, pred)
    if interval is not None:
        return interval
    gold, pred = _strip_lhs(gold), _strip_lhs(pred)
    compound = _compound_match(gold, pred)
    if compound is not None:
        return compound
    gold, pred = _repeating_as_fraction(gold), _repeating_as_fraction(pred)
    colon = _colon_match(gold, pred)
    if colon is not None:
        return colon
    gd, pd = _as_decimal(gold), _as_decimal(pred)
    if gd is not None and pd is not None:
        if gd == pd:
            return True
        g_pct, p_pct = _is_percent(gold), _is_percent(pred)
        if g_pct != p_pct:  # "25%" and 0.25 name one number; "25%" and 25 are equal above
            return (gd / 100 == pd) if g_pct else (pd / 100 == gd)
        return False
    verdict = _math_verify(gold, pred)
    if verdict:
        return True
    return _normalize(gold) == _normalize(pred)


def answers_match(gold: str, pred: str) -> bool:
    """Compare a gold final answer with an extracted one (multi-part aware); never raises."""
    try:
        # the gold is read like a candidate: "2 inequalities" -> 2, "x = 5" -> 5 (lists kept whole)
        gold, pred = plain_notation(gold), plain_notation(pred)
        gold = finalize(gold, math_ctx=True) or gold
        # before the split into parts: "x < 1 or x > 2" is one set, "5 dollars and 50 cents" one value
        whole = _interval_match(gold, pred)
        whole = _compound_match(gold, pred) if whole is None else whole
        if whole is not None:
            return whole
        g_parts, p_parts = _parts_of(gold), _parts_of(pred)
        if len(g_parts) > 1 or len(p_parts) > 1:
            if _match_multi(g_parts, p_parts):
                return True
            # one side may be a braced/bracketed set that math-verify reads as a whole ("\{1,-2\}")
            if len(g_parts) == 1 or len(p_parts) == 1:
                single = g_parts[0][1] if len(g_parts) == 1 else p_parts[0][1]
                if not re.match(r"^\s*\\?\{|^\s*\\left\\\{", strip_wrappers(single)):
                    return False
                return bool(_math_verify(gold, pred))
            return False
        return _single_match(gold, pred)
    except Exception as e:  # noqa: BLE001 - grading must never crash a worker
        log.warning("answer comparison failed (gold=%r, pred=%r): %s", gold, pred, e)
        return False
