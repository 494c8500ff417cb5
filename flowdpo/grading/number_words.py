"""An answer written in words is the number it names: "twelve", "twenty-one", "one hundred and five"; a number
with a scale word is its value: "1.5 million" is 1500000."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
