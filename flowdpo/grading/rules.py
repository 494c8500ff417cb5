"""The grading policy's bounds and text patterns (the policy itself is described in `flowdpo.grading`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

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
WINDOW = 1_000
LAST_MARKERS = 16
# A whole text this short (and of at most 3 words) is a bare answer, like a gold in `generic_final`.
BARE_MAX_CHARS = 32
BARE_MAX_WORDS = 3

MINUS = "\u2212"  # unicode minus sign, as some tokenizers emit
NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|[-+]?\.\d+"
PLAIN_NUMBER_RE = re.compile(rf"^(?:{NUMBER})$")
SIMPLE_VALUE_RE = re.compile(rf"^(?:{NUMBER})(?:\s*/\s*(?:{NUMBER}))?$")  # 13, -4, 1,234, 3/4
ANY_NUMBER_RE = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
PURE_ARITHMETIC_RE = re.compile(r"^[\d\s.,+\-*/×÷^!()\[\]{}]+$")
ARITH_OP_RE = re.compile(r"[+\-*/×÷^]")
UNFINISHED_END_RE = re.compile(r"(?:[=+\-*/×÷^:(,]|\\times|\\cdot|\\div|\\pm|\\frac|\\sqrt)$")
CALCULATOR_RE = re.compile(r"<<[^<>\n]{0,200}>>")
TRAILING_WRAP_RE = re.compile(r"(?:\*\*|__|\$|\\\]|\\\)|`)+$")
SENTENCE_END_RE = re.compile(r"(?<!\d)[.;!?](?=\s|$)|[.;!?](?=\s+[A-Z(\\$])|\n")

# Value notations that are answers, not unevaluated arithmetic.
_INT = r"\d+"
EXP = r"(?:\{\s*[-+]?\d+\s*\}|[-+]?\d+)"
POWER_RE = re.compile(rf"^[-+]?{_INT}\s*\^\s*{EXP}$")  # 2^10, 10^{6}
SCI_RE = re.compile(rf"^[-+]?\d+(?:\.\d+)?\s*(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*{EXP}$")
E_NOTATION_RE = re.compile(rf"^({NUMBER})[eE]([-+]?\d{{1,4}})$")  # 1.5e6, 2E-3: mantissa, exponent
CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?"  # a time of day: 3:45, 10:05:30
CLOCK_RE = re.compile(rf"^{CLOCK}$")
FACTORIAL_RE = re.compile(r"^[-+]?\d+\s*!$")

# Answers in one word that an answer phrase may state ("The answer is yes.", "The answer is even."):
# a closed class, so that prose ("the answer is correct", "the answer is simple") stays no answer.
_CATEGORY_WORDS = """
yes no true false even odd neither both none positive negative undefined infinite infinity
monday tuesday wednesday thursday friday saturday sunday january february march april may june july
august september october november december
"""
CATEGORY_WORDS = frozenset(_CATEGORY_WORDS.split())

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
CONNECTIVES = frozenset(_CONNECTIVE_WORDS.split())
LAST_WORD_RE = re.compile(r"([A-Za-z']+)\W*$")

CORRECTION_HARD_RE = re.compile(
    r"\b(?:is|was|are|were|'s|seems?)\s+(?:wrong|incorrect|not\s+(?:right|correct))\b"
    r"|\b(?:i|we)\s+(?:made|make|have made)\s+(?:a|an)\s+(?:\w+\s+)?(?:mistake|error)\b"
    r"|\bmy\s+(?:mistake|bad|error)\b|\boops\b|\bsorry\b|\bcorrection\b|\bmiscalculat\w*"
    r"|\blet\s+me\s+(?:re-?calculate|re-?compute|redo|correct|fix)\b|\bthat'?s\s+(?:wrong|incorrect)\b",
    re.IGNORECASE,
)
CORRECTION_SOFT_RE = re.compile(
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
ANSWER_PHRASE_RE = re.compile(
    rf"\b(?:{_NOUNS_ANSWER})\b(?:\s*(?:\*\*|__))?{_ANSWER_GAP}\s*(?:\*\*|__)?\s*(?:{_COPULA})(?:\s*:)?"
    rf"(?=\s|\$|\\|\*|_|[-+\d(])"
    rf"|\b(?:{_NOUNS_ANSWER})(?:\s*(?:\*\*|__))?\s*:"
    rf"|\bfinal\s+(?:result|total|value|count|sum)\b{_ANSWER_GAP}\s*(?:{_COPULA})(?=\s|\$|\\|[-+\d(])"
    rf"|\bfinal\s*:",
    re.IGNORECASE,
)
# "X is the answer" / "X is our final answer": the value BEFORE the phrase.
REVERSE_ANSWER_RE = re.compile(
    rf"(?<![\d.,])({NUMBER}|\$[^$]{{1,60}}\$)\s+is\s+(?:the|our|my)\s+(?:final\s+|correct\s+)?answer\b",
    re.IGNORECASE,
)
VALUE_STATEMENT_RE = re.compile(
    rf"\b(?:result|{_NOUNS_VALUE})\b{_GAP}\s*(?:{_COPULA})(?=\s|\$|\\|[-+\d(])"
    r"|\b(?:equals|is equal to)(?=\s)",
    re.IGNORECASE,
)
# A computation or a new value assertion after a value statement supersedes it; chatter does not.
COMPUTATION_RE = re.compile(
    r"=|\d\s*(?:[-+*/×÷x]|\\times|\\cdot|\\div)\s*[-+]?\(?\d"
    r"|\b(?:is|are|was|were|equals|gives|get|gets|got|makes)\s+(?:us\s+|now\s+)?[-+]?\$?\d",
    re.IGNORECASE,
)
CONCLUSION_START_RE = re.compile(
    r"(?:^|(?<=[.!?:]\s)|(?<=\n)|(?<=[.!?]))\s*(?:so|therefore|thus|hence|in total|altogether|"
    r"in conclusion|finally|overall)\b\s*,?\s*",
    re.IGNORECASE,
)
CONCLUSION_VERB_RE = re.compile(
    r"\b(?:is|are|was|were|equals|has(?! to)|have(?! to)|had(?! to)|gets|got|makes|made|costs|comes to|"
    r"totals|remain|remains|left|needs|spent|spends|earns|earned|pays|paid|sells|sold|reads|read)\b|=",
    re.IGNORECASE,
)
# In a correction tail: "it is 13", "it's 13", "should be 13", "is actually 13".
RESTATE_RE = re.compile(
    r"\b(?:it|that|this|which)\s*(?:is|'s|was)\s+(?:actually\s+|really\s+)?(?=[-+\d$\\(])"
    r"|\b(?:should|must|would)\s+be\s+(?=[-+\d$\\(])|\bis\s+actually\s+(?=[-+\d$\\(])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None  # the answer string extracted from the prediction (None if none)
