"""Two kinds of answer that name one value in several pieces.

* A *compound quantity*: one measure in mixed units, "5 dollars and 50 cents", "2 hours 30 minutes",
  "3 feet 4 inches", "1 h 15 min". Its value is given in each unit it names (5.5 dollars or 550 cents;
  2.5 hours or 150 minutes), since a gold gives one number in the unit the question asked for.
* An *interval*: "[2, 5)", "(-\\infty, 3]", or the same range as an inequality in one variable,
  "2 \\le x < 5", "x > 3", "3 < x"; unions of them ("(-\\infty, 1) \\cup (2, \\infty)", "x < 1 or x > 2").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

# ----------------------------------------------------------------------------------------------------
# compound quantities

# Each unit's size in the smallest unit of its measure (seconds, cents, inches, ounces, millimetres, grams,
# millilitres). Only units of one measure combine.
_MEASURES: dict[str, dict[tuple[str, ...], int]] = {
    "time": {
        ("week", "weeks", "wk", "wks"): 604_800,
        ("day", "days"): 86_400,
        ("hour", "hours", "hr", "hrs", "h"): 3_600,
        ("minute", "minutes", "min", "mins"): 60,
        ("second", "seconds", "sec", "secs", "s"): 1,
    },
    "money": {("dollar", "dollars"): 100, ("cent", "cents"): 1},
    "imperial length": {
        ("mile", "miles", "mi"): 63_360,
        ("yard", "yards", "yd", "yds"): 36,
        ("foot", "feet", "ft"): 12,
        ("inch", "inches", "in"): 1,
    },
    "imperial weight": {("pound", "pounds", "lb", "lbs"): 16, ("ounce", "ounces", "oz"): 1},
    "metric length": {
        ("kilometer", "kilometers", "kilometre", "kilometres", "km"): 1_000_000,
        ("meter", "meters", "metre", "metres", "m"): 1_000,
        ("centimeter", "centimeters", "centimetre", "centimetres", "cm"): 10,
        ("millimeter", "millimeters", "millimetre", "millimetres", "mm"): 1,
    },
    "metric weight": {
        ("kilogram", "kilograms", "kg"): 1_000,
        ("gram", "grams", "g"): 1,
    },
    "volume": {
        ("liter", "liters", "litre", "litres", "l", "L"): 1_000,
        ("milliliter", "milliliters", "millilitre", "millilitres", "ml", "mL"): 1,
    },
}
_UNITS: dict[str, tuple[str, int]] = {
    name: (measure, size) for measure, table in _MEASURES.items() for names, size in table.items() for name in names
}

_AMOUNT = r"\d+(?:\.\d+)?"
_UNIT_NAMES = "|".join(sorted(map(re.escape, _UNITS), key=len, reverse=True))
# "5 dollars", "$5", "2h", "30 min" (a unit written against its number too), with "and" or a comma between.
_PIECE = rf"(?:\$\s*(?P<dollars>{_AMOUNT})|(?P<amount>{_AMOUNT})\s*(?P<unit>{_UNIT_NAMES}))\b\.?"
_PIECE_RE = re.compile(_PIECE)
_JOINER_RE = re.compile(r"\s*(?:,\s*(?:and\s+)?|\s+and\s+|\s+)")
# What may follow the pieces: the end, or a short remark ("2 hours and 30 minutes in total", "... long").
_TAIL_RE = re.compile(r"\s*(?:[.!]|\s+(?:in total|total|altogether|long|later|left|each))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Compound:
    measure: str  # "time", "money", ...
    total: Fraction  # in the measure's smallest unit (seconds, cents, ...)
    values: frozenset[Fraction]  # the quantity in each unit it names


_UNIT_IN_TEXT_RE = re.compile(r"\\(?:text|mathrm|textrm|mbox)\s*\{\s*([A-Za-z ,]*?)\s*\}")
# "5 and 50 cents": dollars before cents go without their unit.
_DOLLARS_AND_CENTS_RE = re.compile(rf"^\s*(?:\$\s*)?({_AMOUNT})\s+and\s+(?=\d+\s*cents?\b)")


def _units_in_text(s: str) -> str:
    """`s` with units written in LaTeX text as plain words: "2 \\text{ hours } 30 \\text{ min}" -> "2 hours 30 min"."""
    return re.sub(r"\s+", " ", _UNIT_IN_TEXT_RE.sub(r" \1 ", s)).strip()


def _piece(m: re.Match[str]) -> tuple[Fraction, str, int]:
    """(amount, measure, unit size) of a `_PIECE` match ("$5" is 5 dollars)."""
    amount, unit = (m.group("dollars"), "dollars") if m.group("dollars") is not None else m.group("amount", "unit")
    measure, size = _UNITS[unit]
    return Fraction(Decimal(amount)), measure, size


def compound_quantity(s: str) -> Compound | None:
    """A compound quantity ("2 hours 30 minutes": time, 9000 s, values {5/2, 150}), or None when `s` is not
    one: at least two pieces of one measure, larger units first, each unit once."""
    pieces: list[tuple[Fraction, str, int]] = []
    pos = 0
    text = _DOLLARS_AND_CENTS_RE.sub(r"\1 dollars and ", _units_in_text(s))
    while True:
        m = _PIECE_RE.match(text, pos)
        if m is None:
            break
        pieces.append(_piece(m))
        pos = m.end()
        joiner = _JOINER_RE.match(text, pos)
        if joiner is None or not _PIECE_RE.match(text, joiner.end()):
            break
        pos = joiner.end()
    if len(pieces) < 2 or not _TAIL_RE.fullmatch(text, pos):
        return None
    if len({p[1] for p in pieces}) != 1:
        return None  # "2 hours and 5 dollars": two measures, no one value
    sizes = [p[2] for p in pieces]
    if sizes != sorted(sizes, reverse=True) or len(set(sizes)) != len(sizes):
        return None  # "30 minutes 2 hours", "2 hours 3 hours": not one mixed-unit quantity
    total = sum(amount * size for amount, _, size in pieces)
    return Compound(pieces[0][1], total, frozenset(total / size for size in sizes))


# ----------------------------------------------------------------------------------------------------
# intervals and inequalities

Interval = tuple[str, bool, str, bool]  # (low, low closed, high, high closed); "-oo" / "oo" for no bound
INFINITY = "oo"

_LESS = {"<": False, "\\lt": False, "<=": True, "\\le": True, "\\leq": True, "\\leqslant": True, "=<": True}
_GREATER = {">": False, "\\gt": False, ">=": True, "\\ge": True, "\\geq": True, "\\geqslant": True, "=>": True}
_REL = r"<=|>=|=<|=>|<|>|\\(?:leqslant|geqslant|leq|geq|le|ge|lt|gt)(?![A-Za-z])"
_REL_SPLIT_RE = re.compile(rf"\s*({_REL})\s*")
_VAR_RE = re.compile(r"^[A-Za-z]$")
_INTERVAL_RE = re.compile(r"^\s*(?:\\left)?\s*([(\[])(.+),(.+?)(?:\\right)?\s*([)\]])\s*$")
_UNION_RE = re.compile(r"\s*\\cup\s*|\s*∪\s*|\s+(?:or|\\text\{\s*or\s*\})\s+|\s*\\text\{\s*or\s*\}\s*")


def _bound(s: str) -> str:
    t = s.strip().replace(" ", "")
    if t in ("\\infty", "+\\infty", "∞", "+∞", "oo", "inf", "+inf"):
        return INFINITY
    if t in ("-\\infty", "-∞", "-oo", "-inf"):
        return "-" + INFINITY
    return t


def _inequality(s: str) -> tuple[str, Interval] | None:
    """(variable, interval) of one inequality in one variable ("2 \\le x < 5", "x > 3", "3 < x"), else None."""
    tokens = _REL_SPLIT_RE.split(s.replace("\\left", "").replace("\\right", "").strip())
    if any(not t.strip() or "," in t or ";" in t for t in tokens[::2]):
        return None
    if len(tokens) == 5 and _VAR_RE.match(tokens[2]):  # a < x < b, a > x > b
        a, r1, x, r2, b = tokens
        if r1 in _LESS and r2 in _LESS:
            return x, (_bound(a), _LESS[r1], _bound(b), _LESS[r2])
        if r1 in _GREATER and r2 in _GREATER:
            return x, (_bound(b), _GREATER[r2], _bound(a), _GREATER[r1])
        return None
    if len(tokens) != 3:
        return None
    left, r, right = tokens
    if _VAR_RE.match(left) and not _VAR_RE.match(right):  # x < b, x > b
        b = _bound(right)
        return left, ("-" + INFINITY, False, b, _LESS[r]) if r in _LESS else (b, _GREATER[r], INFINITY, False)
    if _VAR_RE.match(right) and not _VAR_RE.match(left):  # b < x, b > x
        b = _bound(left)
        return right, (b, _LESS[r], INFINITY, False) if r in _LESS else ("-" + INFINITY, False, b, _GREATER[r])
    return None


def _interval(s: str) -> Interval | None:
    m = _INTERVAL_RE.match(s)
    if not m or re.search(r"[,()\[\]]", m.group(2) + m.group(3)):
        return None  # a tuple of three, two intervals side by side
    low, high = _bound(m.group(2)), _bound(m.group(3))
    if not low or not high:
        return None
    return low, m.group(1) == "[", high, m.group(4) == "]"


def as_intervals(s: str) -> tuple[list[Interval], bool] | None:
    """A union of intervals written as intervals or as inequalities in ONE variable, and whether any piece
    was an inequality; None when `s` is not one. An infinite end is open whatever its bracket."""
    pieces = [p for p in _UNION_RE.split(s.strip()) if p.strip()]
    if not pieces or len(pieces) > 8:
        return None
    out: list[Interval] = []
    variables: set[str] = set()
    inequality = False
    for piece in pieces:
        ineq = _inequality(piece)
        if ineq is not None:
            variables.add(ineq[0])
            iv = ineq[1]
            inequality = True
        else:
            iv = _interval(piece)
            if iv is None:
                return None
        low, low_closed, high, high_closed = iv
        out.append((low, low_closed and low != "-" + INFINITY, high, high_closed and high != INFINITY))
    if len(variables) > 1:
        return None
    return out, inequality


_SINGLE_RE = re.compile(rf"^\s*{_PIECE}\s*\.?\s*$")
# Between one quantity and the same one in other units: "3.5 hours, or 3 hours and 30 minutes", "90 minutes
# (1.5 hours)", "90 minutes, i.e. 1.5 hours".
_RESTATEMENT_RE = re.compile(r"\s*(?:,\s*or\s+|\s+or\s+|,?\s*\(\s*(?:or\s+|i\.e\.,?\s+)?|,\s*(?:i\.e\.|that is),?\s+)")


def measured(s: str) -> tuple[str, Fraction] | None:
    """(measure, amount in its smallest unit) of "3.5 hours", "$5", or a compound quantity; None otherwise."""
    compound = compound_quantity(s)
    if compound is not None:
        return compound.measure, compound.total
    m = _SINGLE_RE.match(_units_in_text(s))
    if m is None:
        return None
    amount, measure, size = _piece(m)
    return measure, amount * size


def restated_quantity(s: str) -> str | None:
    """The first of two statements of one quantity in different units ("3.5 hours, or 3 hours and 30 minutes"
    -> "3.5 hours"), else None (two different quantities are not one answer)."""
    m = _RESTATEMENT_RE.search(s)
    if m is None:
        return None
    first, second = s[: m.start()], s[m.end() :].rstrip(" .)")
    a, b = measured(first), measured(second)
    return first if a is not None and a == b else None
