"""An answer written in words is the number it names: "twelve", "twenty-one", "one hundred and five"; a number
with a scale word is its value: "1.5 million" is 1500000."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_UNIT_WORDS = """
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen
eighteen nineteen
"""
_UNITS = {w: i for i, w in enumerate(_UNIT_WORDS.split())}
_TENS = {
    w: 10 * (i + 2)
    for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000}
# Words after a number word that make it part of a phrase, not a value: "one of them", "one more than".
_NOT_A_VALUE_AFTER = frozenset(
    {"of", "more", "less", "fewer", "than", "or", "to", "and", "times", "plus", "minus", "by", "over", "divided"}
    | {"half", "halves", "third", "thirds", "quarter", "quarters", "percent"}
)


def number_words(s: str) -> str | None:
    """The value of an answer written in words: "twelve", "twenty-one", "one hundred and five", "three apples"
    (at most three words of units after it); None for anything else ("one of them", "a dozen", "first")."""
    words = re.findall(r"[A-Za-z]+|\S", s.lower().replace("-", " "))
    total = current = 0
    used = 0
    for w in words:
        if w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w in _SCALES and used:
            if w == "hundred":
                current *= 100
            else:
                total += current * _SCALES[w]
                current = 0
        elif w == "and" and used and words[used - 1] in _SCALES:
            pass  # "one hundred and five"
        else:
            break
        used += 1
    if not used or words[used - 1] == "and":
        return None
    rest = words[used:]
    if rest and rest[-1] in {".", "!"}:
        rest = rest[:-1]
    if len(rest) > 3 or any(
        not w.isalpha() or w in _NOT_A_VALUE_AFTER or w in _UNITS or w in _TENS or w in _SCALES for w in rest
    ):
        return None
    return str(total + current)


_SCALE_WORDS = {"hundred": 100, "thousand": 1_000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# A scale word right after a number ("1.5 million", "$3 billion dollars"); not "hundreds of", "a million times".
SCALE_AFTER_RE = re.compile(r"\s+(hundred|thousand|million|billion|trillion)\b(?!\s+(?:of|times)\b)", re.IGNORECASE)


def scaled(number: str, scale_word: str) -> str | None:
    """"1.5", "million" -> "1500000" (exact, no exponent); None if `number` is not a plain number."""
    try:
        value = Decimal(number.replace(",", "")) * _SCALE_WORDS[scale_word.lower()]
    except (InvalidOperation, KeyError):
        return None
    text = format(value.normalize(), "f")
    return text.removesuffix(".0")


# A smaller number after a scaled one adds to it: "12 thousand 500" is 12500, "2 million 300 thousand" 2300000.
_MORE_AFTER_SCALE_RE = re.compile(r"\s+(?:and\s+)?(\d{1,3})(?![\d.,/])")


def scaled_from(number: str, text: str, pos: int) -> tuple[str, int] | None:
    """The value of `number` followed at `text[pos:]` by a scale word and, optionally, smaller parts ("1.5
    million", "12 thousand 500", "2 million 300 thousand"), with where it ends; None without a scale word."""
    scale = SCALE_AFTER_RE.match(text, pos)
    if scale is None:
        return None
    value = scaled(number, scale.group(1))
    if value is None:
        return None
    end = scale.end()
    more = _MORE_AFTER_SCALE_RE.match(text, end)
    if more and "." not in value:
        rest = scaled_from(more.group(1), text, more.end()) or (more.group(1), more.end())
        if Decimal(rest[0]) < _SCALE_WORDS[scale.group(1).lower()]:
            return str(int(value) + int(Decimal(rest[0]))), rest[1]
    return value, end


_FRACTION_WORDS = {
    "half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4, "fourth": 4, "fourths": 4,
    "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6, "seventh": 7, "sevenths": 7, "eighth": 8, "eighths": 8,
    "ninth": 9, "ninths": 9, "tenth": 10, "tenths": 10,
}  # fmt: skip
_COUNT = r"a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\d{1,6}"
_FRACTION_PHRASE_RE = re.compile(
    rf"^(?:(?P<whole>\d{{1,9}}|[a-z]+(?:[\s-][a-z]+)?)\s+and\s+)?(?P<count>{_COUNT})?[\s-]*"
    rf"(?:(?P<frac>{'|'.join(_FRACTION_WORDS)})|(?P<dozen>dozens?))"
    r"(?P<rest>(?:\s+[a-z][a-z'-]*){0,3})\s*[.!]?$",
    re.IGNORECASE,
)


def fraction_words(s: str) -> str | None:
    """The value of a fraction or a dozen in words: "a half", "two thirds", "3 and a half", "two and a half
    hours", "a dozen" ("7/2", "12"); None for anything else ("third" alone is an ordinal, "half of them" is no
    value, "one third of the cake" neither)."""
    m = _FRACTION_PHRASE_RE.match(s.strip())
    if m is None:
        return None
    rest = m.group("rest").lower().split()
    if any(w in _NOT_A_VALUE_AFTER or w in _UNITS or w in _TENS or w in _FRACTION_WORDS for w in rest):
        return None
    count_word = (m.group("count") or "").lower()
    if not count_word and (m.group("dozen") or m.group("frac").lower() != "half"):
        return None  # "third", "dozen": an ordinal, a word
    count = 1 if count_word in ("", "a", "an") else int(count_word) if count_word.isdigit() else _UNITS.get(count_word)
    if count is None:
        return None
    if m.group("dozen"):
        value = Fraction(12 * count)
    else:
        if m.group("frac").lower().endswith("s") != (count > 1):
            return None  # "two third", "one thirds": not a fraction phrase
        value = Fraction(count, _FRACTION_WORDS[m.group("frac").lower()])
    whole = m.group("whole")
    if whole is not None:
        if m.group("dozen") or count_word not in ("a", "an", "one"):
            return None  # "3 and two thirds" is rare; "3 and a dozen" is two things
        whole_value = whole if whole.isdigit() else number_words(whole)
        if whole_value is None or not whole_value.isdigit():
            return None
        value += int(whole_value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
