"""Outcome grading: did a flow's final text reach the gold answer?

Grading decides every DPO pair (chosen = the branch that ends correct), so a false positive teaches the
flow to stop early or to ramble, and a false negative punishes a right answer. `grade(text, gold)` never
raises and stays fast (it runs for every rollout).

Policy: which answer a text gives
---------------------------------
0. **Notation.** Unicode math and answer markup are first written the way the rules below read them
   (`flowdpo.grading.notation`): "5²" is 5^2, "3½" is 3 1/2, "2√3" is 2\\sqrt{3}, "π", "∞", "≤", full-width
   digits, thin spaces, "<b>18</b>"; in texts and golds alike.
1. **Answer statements.** A text states answers in three strengths:
   * *strong* markers: `\\boxed{X}` / `\\fbox{X}` and `#### X`;
   * *answer phrases*: the word "answer" in a marker form ("the answer is X", "Answer: X", "the answer to
     this problem is X", "the final answer is X", "X is the answer"), "the final result / total / value
     is X", "Final: X" and an "A: X" line of its own (not a list of choices "A: ... B: ..."); X is a math answer or one word of a closed categorical class ("yes", "even",
     "Monday"; not when a number follows it, where it answers a sub-question), never another prose word ("the
     answer is correct" states nothing);
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
   A new question after an answer statement ("Question: ...", "Q: ...", "Problem 2:" at a line's start) starts a
   continuation past the answer, as a model imitating a few-shot prompt writes; only the text before it is read.
   A value statement's noun phrase may hold a copula of its own: "The remainder when 17 is divided by 5 is 2"
   gives 2. "about 5", "approximately 3.33" state 5 and 3.33.
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
   candidate keeps the value after the last "=" ("x = 5" gives 5), the leading number of "13 apples"
   (and of "18km" in prose, a unit abbreviation against its number; in math `5m` stays 5m),
   and value notations: powers (`2^10`, `10^{6}`), scientific notation (`1.5 \\times 10^3`, "1.5 x 10^3"), factorials
   in math context (`\\boxed{5!}` is 120; a prose "The answer is 5!" is an exclamation). Unevaluated
   arithmetic ("12 + 1", `\\boxed{12 + 1}`) is NOT an answer (math-verify would evaluate it to 13).
   LaTeX spacing (`\\,`, `\\;`, `\\!`, `~`) is layout and is dropped (`\\boxed{12\\,\\%}` is 12%); a
   closed box's single letter is a variable (`\\boxed{a}`), in prose "a" is the article.
   An answer in words is the number it names ("The answer is twenty-one." gives 21, "negative five" -5; "one
   of them" is no number); a scale word multiplies ("1.5 million" is 1500000) and a smaller number after it adds ("12 thousand 500"
   is 12500); one measure in mixed units ("2 hours and 30 minutes", "5 dollars and 50 cents", "3 feet 4 inches")
   is one value, right in any unit it names (2.5 or 150; 5.5 or 550), never their sum, and the same quantity
   stated again in other units is one answer ("3.5 hours, or 3 hours and 30 minutes" gives 3.5); a fraction or a dozen in
   words is its value ("two and a half" 5/2, "two thirds", "a dozen"; "third" alone is an ordinal), and "3 and
   1/2" a mixed number; "1 in 6" is the probability 1/6; an ordinal ("27th") is its
   number; quotes around an answer are not part of it; a lone number's bracketed remark of words or a
   computation ("27 (3 bags of 9)") is not part of it. A statement that offers a second value in place of
   the first gives NO answer, and the text's last number is not read instead: a hedge ("6, or maybe 7", "6 (or 7)", "6 to 7", "\\boxed{5} or
   \\boxed{6}") or a quotient with its remainder ("7 R 2"). Grading either value correct would reward
   hedging. "6 or more" and a multi-part answer ("5 or 6", policy 6) are not hedges; one value in two
   notations ("6, or 6.0", "0.5 or 1/2") is one answer.
6. **Multi-part answers.** A candidate or gold whose top level (outside brackets) is a list joined by
   ",", ";", "and", "or" (`3, 5`; `x=16 and x=81`; `x = 1 or x = -2`; `x=±1`, where ± gives both signs;
   `\\text{A, C}`, a list written as text)
   is compared part by part as a SET: same number of parts, each matched once; "x=" names must agree
   where both sides give them. A bracketed `(2, 3)` / `[-1, 1]` is one ordered object (tuple or
   interval) compared whole. A single-value gold never matches a multi-part prediction that merely
   contains it ("3, 5" is wrong for 5), nor the other way round.

An inequality in one variable is the interval it describes ("2 \\le x < 5" is [2, 5), "x > 3" is (3, \\infty),
"x < 1 or x > 2" the union of two), compared end by end with an interval or another inequality.

Comparison of two single values: a repeating decimal (`0.\\overline{3}`, "0.(3)") is first the exact fraction it
names; plain numbers exactly as decimals (the common case; a percentage equals its value over 100 when only one
side has a percent sign: 0.25 is right for a gold "25\\%"); anything else by
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

from flowdpo.grading.extract import extract_answer
from flowdpo.grading.match import answers_match
from flowdpo.grading.rules import Grade, log


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

__all__ = ["Grade", "answers_match", "extract_answer", "grade"]
