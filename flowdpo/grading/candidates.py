"""What a candidate answer is: wrappers removed, unfinished texts refused, the value it states, its parts (`3, 5`; `x = 1 or x = -2`; `x=±1`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from flowdpo.grading.number_words import fraction_words, number_words, scaled_from
from flowdpo.grading.quantities import compound_quantity, restated_quantity
from flowdpo.grading.rules import (
    ARITH_OP_RE,
    CLOCK,
    CONNECTIVES,
    EXP,
    FACTORIAL_RE,
    LAST_WORD_RE,
    MAX_ANSWER_CHARS,
    MINUS,
    NUMBER,
    PLAIN_NUMBER_RE,
    POWER_RE,
    PURE_ARITHMETIC_RE,
    SCI_RE,
    SIMPLE_VALUE_RE,
    TRAILING_WRAP_RE,
    UNFINISHED_END_RE,
)


@dataclass(frozen=True)
class Statement:
    start: int  # where the statement starts in the text
    end: int  # where its candidate ends
    candidate: str


# ----------------------------------------------------------------------------------------------------
# candidate clean-up


def strip_wrappers(s: str) -> str:
    """Remove markdown/LaTeX wrappers and trailing punctuation around a candidate answer.

    At most _MAX_WRAPPER_LAYERS rounds: each round is linear, and a text of thousands of wrappers ("\\$\\$...")
    must not take a round per wrapper (quadratic: 15 s for 20,000)."""
    for _ in range(_MAX_WRAPPER_LAYERS):
        prev = s
        s = _LATEX_THOUSANDS_RE.sub("", s)  # "1\,000", "1{,}000": one number
        s = _LATEX_SPACE_RE.sub(lambda m: "" if m.group(0) == "\\!" else " ", s)  # "12\,\%", "5~\text{cm}"
        s = s.strip()
        s = re.sub(r"^(?:\*\*|__|`|\$|\\\(|\\\[)+", "", s)
        s = re.sub(r"(?:\*\*|__|`|\$|\\\)|\\\])+$", "", s)
        s = s.rstrip(".,;?").strip()
        s = re.sub(r"(?<![\d}])!+$", "", s).strip()  # "13!" is handled by the caller (factorial or not)
        s = _QUOTED_RE.sub(r"\1", s)  # "“18”", "'18'": an answer in quotes
        s = re.sub(r"^\\\$", "", s)  # a currency sign "\$18.90"
        s = re.sub(r"^\\(?:displaystyle|textstyle)\s*", "", s)
        s = _VALUE_IN_TEXT_RE.sub(r"\1", s)  # "\mathbf{12}", "\text{5 apples}": the value inside
        if s == prev:
            break
    return s


_MAX_WRAPPER_LAYERS = 16
_QUOTED_RE = re.compile(r"^[\"“‘'](.+)[\"”’']$", re.DOTALL)
# A LaTeX thousands separator between digit groups: thin space, space, or a braced comma.
_LATEX_THOUSANDS_RE = re.compile(r"(?<=\d)(?:\\,|\\ |\\;|\{,\})(?=\d{3}(?!\d))")
# LaTeX spacing elsewhere is only layout: thin / medium / thick / negative space, a control space, a tie.
# (\quad and \qquad stay: they separate the parts of a multi-part answer.)
_LATEX_SPACE_RE = re.compile(r"(?<!\\)\\[,:;!> ]|~")  # not a matrix row break (two backslashes)
_VALUE_IN_TEXT_RE = re.compile(r"^\\(?:text|textbf|textrm|mathbf|mathrm|boldsymbol|mbox)\{([-+]?\d[^{}]*)\}$")


def is_unfinished(text: str, strict: bool = False, clause: bool = True) -> bool:
    """True when the text ends mid-expression ("12 + 1 =", "so 12 +", "The answer is:", "13,") or
    mid-clause ("..., which is", "we get", "the sum of").

    `clause=False` (math, such as a closed box's content): only mid-expression counts; "a" is a variable
    there, not the article.

    `strict` (whole texts, not candidates): also a text that stops mid-sentence, with no final
    punctuation after a word that is not the unit of a number ("... multiplying the numerator" is cut
    off; "so Tom has 10 apples" is finished).
    """
    t = text.replace(MINUS, "-").rstrip()
    t = TRAILING_WRAP_RE.sub("", t).rstrip()
    if not t:
        return True
    if UNFINISHED_END_RE.search(t):
        return True
    if clause and (t[-1].isalpha() or t[-1] == "'"):
        m = LAST_WORD_RE.search(t)
        if m and m.group(1).lower() in CONNECTIVES:
            return True
        if strict:
            last = re.split(r"[.;!?:\n]", t)[-1]
            unit = re.search(r"\d[%)}\]]?\s+([A-Za-z][\w'-]*)(?:\s+[A-Za-z][\w'-]*){0,2}$", last)
            if unit is None or unit.group(1).lower() in CONNECTIVES:
                return True  # "... multiply 12 by the numerator"; "... has 10 apples" is finished
    return False


def _is_value_notation(s: str) -> bool:
    s = s.replace(" ", "")
    return bool(POWER_RE.match(s) or SCI_RE.match(s) or FACTORIAL_RE.match(s))


_VERBAL_EQUALS_RE = re.compile(
    r",?\s*\b(?:(?:which|that|this)\s+(?:is|equals|gives(?:\s+us)?|makes)|equals|is\s+equal\s+to)\b\s*",
    re.IGNORECASE,
)
# A cut-off tail that is itself an answer statement being written ("... The correct answer").
PENDING_STATEMENT_RE = re.compile(
    r"\b(?:answer|result|final(?:ly)?|so|therefore|thus|hence)\b", re.IGNORECASE
)
_LEADING_VALUE_RE = re.compile(
    rf"^(?:[-+]?\d+(?:\.\d+)?\s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*{EXP}"
    rf"|[-+]?\d+\s*\^\s*{EXP}|(?:{NUMBER})(?:\s*/\s*\d+(?![\d.]))?)"
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
    if not math_ctx and "/" not in m.group(0) and re.match(r"^\s*/\s*[A-Za-z]{2,}\b", rest):
        return m.group(0).strip()  # "12/hour", "$3/kg": a rate's unit (not "12/x": one letter is a variable)
    if re.match(r"^\s*(?:\^|\\times|\\cdot|\*|×|/|\.\d|\\%|[xX]\s*\d)", rest):
        return None  # the value goes on (an expression): not a value followed by words
    if rest.startswith("!"):
        if math_ctx or re.match(r"^!\s*[\w\\(=]", rest):
            return None  # a factorial: 5! (in math context), "5! = 120"
        return m.group(0).strip()  # prose: "The answer is 5!" is an exclamation
    # (not "3:45" / "2:3": a time or a ratio is one value)
    if re.match(r"^(?:\s*$|\s+[A-Za-z]|\s*(?:[%,;?)\]]|:(?!\d))|\s*\\(?:text|mbox|mathrm|,|;|quad)\b)", rest):
        return m.group(0).strip()
    if not math_ctx and _GLUED_UNIT_RE.match(rest):
        return m.group(0).strip()  # "18km", "5cm": a unit written against the number (in math, "5m" is 5m)
    return None


# A unit abbreviation written against its number in prose ("18km", "2.5kg", "3hrs", "60mph", "12m^2").
_GLUED_UNIT_RE = re.compile(
    r"^(?:km|cm|mm|m|kg|mg|g|lbs?|oz|ft|yds?|mi|in|hrs?|h|mins?|secs?|s|ml|mL|l|L|mph|kph|km/h|m/s)"
    r"(?:\^\{?[23]\}?|[²³])?(?![A-Za-z0-9^_])"  # "12m^2", "8cm³"
)
_SCI_TIMES_X_RE = re.compile(r"(\d)\s*[xX]\s*10\s*\^")


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


_APPROXIMATELY_RE = re.compile(
    r"^(?:about|approximately|approx\.?|around|roughly|circa|≈|\\approx)\s*(?=[-+$€£¥₹\\]?\s*\.?\d)", re.IGNORECASE
)
_CURRENCY_RE = re.compile(r"^(?:USD|US\$|EUR|GBP|INR|Rs\.?|€|£|¥|₹)\s*(?=[-+]?\d)")
_ONE_IN_RE = re.compile(r"(?:an?\s+)?(\d{1,9})\s+in\s+(\d{1,9})(?:\s+(?:chance|odds|probability))?", re.IGNORECASE)
_MIXED_RE = re.compile(r"^([-+]?)(\d{1,9})\s+(?:and\s+)?(\d{1,9})\s*/\s*(\d{1,9})(?:\s+[A-Za-z][\w\s'-]{0,30})?$")
_WORD_REMARK_RE = re.compile(
    r"\s+\((?:[A-Za-z][A-Za-z'.-]*(?:\s+[A-Za-z][A-Za-z'.-]*){0,3}"  # "7 (seven)", "12 (in total)"
    r"|\s*\d[\d.,]*(?:\s*[-+*/×÷xX]\s*\d[\d.,]*){1,8}(?:\s*=\s*\d[\d.,]*)?)\s*\)"  # "8 (10 - 2)"
    r"(?:\s+[A-Za-z][\w'-]*){0,3}\s*[.!]?$"  # and units after it: "18 (eighteen) apples"
)
# A lone number (outside math) followed by a remark in brackets that mixes words and numbers or shows the
# computation: "27 (3 bags of 9 marbles)", "27 [3 x 9]". Not a second value offered in place of the first
# ("6 (or 7)", "6 (maybe 7)", "6 (7)": hedges, handled by the caller), not LaTeX ("(-\infty, 0) \cup (2, \infty)").
_PROSE_REMARK_RE = re.compile(
    r"^([-+]?[$€£]?\d[\d,]*(?:\.\d+)?)\s+[(\[](?!\s*(?:or|maybe|perhaps|possibly|probably|approximately|about|around|to)\b)"
    r"(?=[^()\[\]]*(?:[A-Za-z]{2}|\d\s*[-+*/×÷xX=]\s*\d))[^()\[\]\\]{1,80}[)\]]\s*[.!]?$"
)
# A sign before a currency sign: "-$5", "+€3".
_SIGNED_CURRENCY_RE = re.compile(r"^([-+])\s*(?:\\?\$|€|£|¥|₹)\s*(?=\d)")
# A number in words with its digits in brackets: "eight (8)".
_WORDS_THEN_DIGITS_RE = re.compile(rf"([A-Za-z][A-Za-z\s-]{{0,60}}?)\s*\(\s*({NUMBER})\s*\)\s*[.!]?")
_CLOCK_RE = re.compile(rf"^({CLOCK})\s*(?:[AaPp]\.?\s?[Mm]\.?)?\s*[.!]?$")


# A value, then another offered in its place: "6, or maybe 7", "6 (or 7)", "6 or perhaps 7 apples", a range
# "6 to 7". Not one answer (a hedge: grading either value correct would reward hedging). "5 or 6" alone is a
# two-part answer (policy 6) and "6 or more" offers no second value.
_ALTERNATIVE_RE = re.compile(
    rf"^({NUMBER})\s*(?:,\s*|\(\s*)?(?:or|maybe|perhaps|possibly|to)\b(?:\s+(?:maybe|perhaps|possibly))?"
    rf"\s*\$?\s*({NUMBER})",
    re.IGNORECASE,
)


def _plain_value(s: str) -> Fraction | None:
    """The exact value of a plain number or a plain fraction ("1,200", "6.0", "-3", "1/2"), else None.
    (match.py's `_as_decimal` reads more forms, percentages and e-notation among them; a restatement here must
    be the same plain value.)"""
    if not SIMPLE_VALUE_RE.match(s):
        return None
    try:
        num, _, den = s.replace(",", "").replace(" ", "").partition("/")
        value = Fraction(Decimal(num))
        return value / Fraction(Decimal(den)) if den else value
    except (InvalidOperation, ZeroDivisionError, ValueError):
        return None


def _one_value(parts: list[str]) -> str | None:
    """The value of parts that all restate one number ("6, or 6.0"), else None."""
    values = [_plain_value(p) for p in parts]
    return parts[0] if None not in values and len(set(values)) == 1 else None


def _two_values(s: str) -> bool:
    """`s` offers a second, different value in place of the first ("6, or maybe 7"; not "6, or 6.0")."""
    m = _ALTERNATIVE_RE.match(s)
    return m is not None and _plain_value(m.group(1)) != _plain_value(m.group(2))


# A quotient with its remainder ("7 R 2", "7 remainder 2"): not the value 7.
# What `finalize` returns for both: a statement that gives no single answer. It still ends the search for an
# answer (the text's last number is not read instead), unlike None (no answer statement here at all).
NO_SINGLE_ANSWER = ""
_REMAINDER_RE = re.compile(rf"^(?:{NUMBER})\s*(?:R|r|rem\.?|remainder)\s*\d", re.IGNORECASE)

def finalize(candidate: str, math_ctx: bool = False) -> str | None:
    """Turn the text after an answer marker (or a box's content) into one final answer, or None.

    Keeps multi-part lists whole, the part after the last "=", the leading number of "13 apples" and
    value notations (2^10, 5!, 1.5 \\times 10^3); rejects unevaluated arithmetic such as "12 + 1".
    Returns NO_SINGLE_ANSWER for a statement of two values in place of one ("6, or maybe 7", "7 R 2").
    """
    raw = candidate.replace(MINUS, "-").strip()
    if not raw:
        return None
    # "$...$" is math; a "$" with no closing one is a currency sign ("$12/hour", "$5!")
    math_ctx = math_ctx or raw.startswith(("\\(", "\\[")) or (raw.startswith("$") and "$" in raw[1:])
    s = strip_wrappers(raw)
    if not s:
        return None
    remark = _WORD_REMARK_RE.search(s)
    if remark and re.search(r"[\d\\]", s[: remark.start()]):
        s = s[: remark.start()]  # "7 (seven)", "12 (in total)": a remark in words after the value
    prose_remark = None if math_ctx else _PROSE_REMARK_RE.match(s)
    if prose_remark:
        s = prose_remark.group(1)  # "27 (3 bags of 9 marbles)"
    restated = None if math_ctx else restated_quantity(s)
    if restated is not None:
        return finalize(restated)  # "3.5 hours, or 3 hours and 30 minutes": one quantity in two units
    if (not math_ctx or "\\text" in s or "\\mathrm" in s) and compound_quantity(s) is not None:
        return s  # "2 hours and 30 minutes", "2 \\text{ h } 30 \\text{ min}": one value in mixed units (compared in each unit)
    s = _SCI_TIMES_X_RE.sub(r"\1 \\times 10^", s)  # "1.8 x 10^3": scientific notation with a letter x
    s = _APPROXIMATELY_RE.sub("", s)  # "about 5", "approximately 3.33": the value stated is 5, 3.33
    s = _CURRENCY_RE.sub("", s)  # "USD 12", "Rs. 40", "€5"
    s = _SIGNED_CURRENCY_RE.sub(r"\1", s)  # "-$5" -> -5
    if not math_ctx:
        fraction = fraction_words(s)
        if fraction is not None:
            return fraction  # "two and a half hours", "a third", "a dozen"
    mixed = _MIXED_RE.match(s)
    if mixed and int(mixed.group(3)) < int(mixed.group(4)):  # "3 1/2" -> 7/2
        sign, whole, num, den = mixed.group(1), *map(int, mixed.group(2, 3, 4))
        return f"{sign}{whole * den + num}/{den}"
    negative = re.fullmatch(r"(?:negative|minus)\s+(\S.*)", s, re.IGNORECASE)
    if negative:
        value = finalize(negative.group(1), math_ctx)
        if value and PLAIN_NUMBER_RE.match(value) and value[0] not in "+-":
            return f"-{value}"  # "negative five", "minus 5"
    ordinal = re.fullmatch(r"(\d+)(?:st|nd|rd|th)", s)
    if ordinal:
        return ordinal.group(1)  # "27th": the position is the number
    option = re.fullmatch(r"\(?([A-Z])\)?", s)
    if option:
        return option.group(1)  # a choice: "A", "(C)" (a capital letter alone is not the article "a")
    chance = _ONE_IN_RE.fullmatch(s)
    if chance and int(chance.group(2)) > 0:
        return f"{chance.group(1)}/{chance.group(2)}"  # "1 in 6", "a 1 in 6 chance": a probability
    time = _CLOCK_RE.match(s)
    if time:
        return time.group(1)  # "3:45 PM" -> 3:45 (a time of day is compared as written, without AM/PM)
    parts = split_parts(s)
    if parts is not None:
        same = _one_value(parts)
        return same if same is not None else s  # "3, 5", "x = 1 or x = -2": a multi-part answer, compared as a set
    if _two_values(s) or _REMAINDER_RE.match(s):
        return NO_SINGLE_ANSWER  # "6, or maybe 7": a hedge between two values; "7 R 2": quotient and remainder
    if re.match(r"[A-Za-z]", s) and not math_ctx:
        both = _WORDS_THEN_DIGITS_RE.fullmatch(s)
        if both and number_words(both.group(1)) == both.group(2).replace(",", ""):
            return both.group(2)  # "eight (8)"
        value = number_words(s)
        if value is not None:
            return value  # "twelve", "twenty-one apples"
    lead = _leading_number(s, math_ctx)
    if lead is not None and not SIMPLE_VALUE_RE.match(s):
        at = s.find(lead)
        prefix_ok = re.fullmatch(r"[-+$€£¥₹\\\s]*", s[: max(at, 0)])
        scale = scaled_from(lead, s, at + len(lead)) if prefix_ok else None
        if scale:
            return scale[0]  # "1.5 million", "3 billion dollars", "12 thousand 500"
        return lead  # "13 apples", "1,234, which is ...", "7 because 3 + 4 = 7"
    if len(s) > MAX_ANSWER_CHARS:
        return None
    # "2 + 3, which equals 5" / "12 + 1 which is 13": the value after a verbal "="
    s = _VERBAL_EQUALS_RE.sub(" = ", s)
    eq = _last_top_level_eq(s)
    if eq >= 0 and not re.search(r"[<>]=|=[<>]|\\[lg]eq?\b|\\neq\b", s):
        s = strip_wrappers(s[eq + 1 :])
        if not s:
            return None
        lead = _leading_number(s, math_ctx)
        if lead is not None and not SIMPLE_VALUE_RE.match(s):
            return lead
    if not s or is_unfinished(s, clause=not math_ctx):
        return None
    if s.endswith("!") and not math_ctx and not FACTORIAL_RE.match(s.replace(" ", "")):
        s = s.rstrip("!").strip()
    if _is_value_notation(s):
        return s
    if PURE_ARITHMETIC_RE.match(s) and not SIMPLE_VALUE_RE.match(s):
        body = s.strip("()[]{} ")
        if SIMPLE_VALUE_RE.match(body):
            return body
        if _is_value_notation(body):
            return body
        if ARITH_OP_RE.search(body.lstrip("+-")) or "!" in body:
            return None  # an expression, not its value
    return s


# ----------------------------------------------------------------------------------------------------
# multi-part answers

_PART_SEP_RE = re.compile(
    r"\s*(?:,\s*(?:and|or)\s+|;\s*|\s(?:and|or)\s|\\text\{\s*(?:and|or|,)\s*\}|\\(?:quad|qquad)\b)\s*"
    r"|,(?!\d{3}(?!\d))\s*"
)
LHS_RE = re.compile(r"^\s*([A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?)\s*=\s*(?!=)")
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
    p = LHS_RE.sub("", part.strip(), count=1).strip()
    p = strip_wrappers(p)
    if not p or len(p) > 60:
        return False
    if not re.search(r"[\d\\]|^[-+±]?[A-Za-z]$", p):
        return False
    unit = re.match(rf"^(?:{NUMBER})\s+([A-Za-z]+)(?:\s+[A-Za-z]+)?$", p)
    if unit and unit.group(1).lower() not in CONNECTIVES:
        return True  # "13 apples" in "13 apples, 2 pears"
    no_cmds = re.sub(r"\\[A-Za-z]+", " ", p)
    return not _WORD_RE.search(no_cmds) and not _is_arithmetic(p)


def _is_arithmetic(p: str) -> bool:
    """An unevaluated numeric expression ("12 + 1") is not a part."""
    q = p.replace(" ", "").replace("±", "")
    return bool(
        PURE_ARITHMETIC_RE.match(q)
        and not SIMPLE_VALUE_RE.match(q)
        and not _is_value_notation(q)
        and ARITH_OP_RE.search(q.lstrip("+-"))
    )


def _unwrap_set(s: str) -> str:
    """`\\{1, -2\\}` / `{1, -2}` (a set written with braces) and `\\text{A, C}` (a list written as text) -> its
    content; other text unchanged."""
    t = s.strip()
    text = _TEXT_LIST_RE.fullmatch(t)
    if text:
        return text.group(1)
    for open_, close in (("\\{", "\\}"), ("\\left\\{", "\\right\\}")):
        if t.startswith(open_) and t.endswith(close):
            return t[len(open_) : -len(close)]
    return t


_TEXT_LIST_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*[,;][^{}]*)\}")


def split_parts(s: str) -> list[str] | None:
    """The parts of a multi-part answer ("3, 5" -> ["3", "5"]), or None when `s` is one answer."""
    t = _unwrap_set(strip_wrappers(s.replace(MINUS, "-")))
    if len(t) > MAX_ANSWER_CHARS:
        return None
    parts = [p.strip() for p in _top_level_split(t)]
    if len(parts) < 2 or not all(_answer_like(p) for p in parts):
        return None
    return parts


def expand_parts(parts: list[str]) -> list[tuple[str | None, str]]:
    """(name, value) per part; "x=16" -> ("x", "16"); "±2" -> two parts (2 and -2)."""
    out: list[tuple[str | None, str]] = []
    for part in parts:
        m = LHS_RE.match(part)
        lhs = m.group(1).replace(" ", "") if m else None
        value = strip_wrappers(part[m.end() :] if m else part)
        if "=" in value:
            value = strip_wrappers(value.rsplit("=", 1)[1])
        pm = value.replace("\\pm", "±")
        if pm.count("±") == 1:
            plus = pm[1:] if pm.startswith("±") else pm.replace("±", "+")
            out += [(lhs, plus.strip()), (lhs, pm.replace("±", "-").strip())]
        else:
            out.append((lhs, value))
    return out
