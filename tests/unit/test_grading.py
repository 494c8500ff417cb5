"""Grading: answer extraction and comparison on real math-verify (no mocks).

A wrong "correct" here becomes a wrong DPO pair, so the table leans on the traps: unfinished
expressions, the last-number rule, and unevaluated arithmetic that math-verify would happily evaluate.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import pytest

from flowdpo.grading import Grade, answers_match, extract_answer, grade
from flowdpo.grading.quantities import as_intervals, compound_quantity

# (model text, gold, expected correct, expected extracted)
CASES = [
    # plain arithmetic chains and answer phrases from small chat models
    ("3 + 5 * 2 = 3 + 10 = 13.", "13", True, "13"),
    ("The answer is 13.", "13", True, "13"),
    ("**Answer:** 13", "13", True, "13"),
    ("**Answer**: 13", "13", True, "13"),
    ("The answer is: 7.", "7", True, "7"),
    ("The answer is **13**.", "13", True, "13"),
    ("The answer is $13$.", "13", True, "13"),
    ("8 * 9 = 72", "72", True, "72"),
    ("So the answer is 72 apples.", "72", True, "72"),
    ("The answer is 13. This is because addition combines two quantities.", "13", True, "13"),
    ("The answer is 13\n\nI hope this helps!", "13", True, "13"),
    ("First, 3 + 5 = 8. The answer is 8. Let me check: the answer is correct.", "8", True, "8"),
    ("The answer is 7 because 3 + 5 = 8", "8", False, "7"),
    # unfinished texts and unevaluated expressions: never an answer
    ("12 + 1 =", "13", False, None),
    ("12 + 1 =", "1", False, None),
    ("so the result is 12 +", "12", False, None),
    ("so 12 +", "13", False, None),
    ("The result is 12 + 1", "1", False, None),
    ("The result is 12 + 1", "13", False, None),
    ("5 - 4", "4", False, None),
    ("2 - -4", "-4", False, None),
    ("\\boxed{12 + 1}", "13", False, None),
    ("The answer is \\boxed{13", "13", False, None),
    ("The answer is:", "13", False, None),
    # Was (False, None): every cut-off text had no answer. Policy now (issue #9): an explicit answer
    # statement made before the cut-off tail still counts; the unfinished "12 + 1 =" is a check of it.
    ("We get \\boxed{13}. Double-check: 12 + 1 =", "13", True, "13"),
    # boxed (nested braces, \fbox, last box wins)
    ("\\boxed{\\frac{1}{2}}", "0.5", True, "\\frac{1}{2}"),
    ("so $x = \\boxed{\\frac{\\sqrt{2}}{2}}$", "\\frac{\\sqrt{2}}{2}", True, "\\frac{\\sqrt{2}}{2}"),
    ("First \\boxed{9}, then adding 4 gives \\boxed{13}.", "13", True, "13"),
    ("\\fbox{7}", "7", True, "7"),
    ("The final answer is $\\boxed{x = 5}$.", "5", True, "5"),
    # #### and thousands separators
    ("#### 1,234", "1234", True, "1,234"),
    ("The library has 1,234 books now.", "1234", True, "1,234"),
    ("1,234,567", "1234567", True, "1,234,567"),
    ("He paid 617 * 2 = 1,234 dollars.\n#### 1234", "1,234", True, "1234"),
    # signs, decimals, fractions
    ("-4", "4", False, "-4"),
    ("The answer is -4.", "-4", True, "-4"),
    ("x = -4", "-4", True, "-4"),
    ("\u22124", "-4", True, "-4"),
    ("13.0", "13", True, "13.0"),
    ("the answer is 3.5", "3.5", True, "3.5"),
    ("0.5", "\\frac{1}{2}", True, "0.5"),
    ("Answer: $\\frac{3}{4}$", "0.75", True, "\\frac{3}{4}"),
    ("The answer is 0.33", "\\frac{1}{3}", False, "0.33"),
    ("The final answer is 2\\sqrt{3}.", "2\\sqrt{3}", True, "2\\sqrt{3}"),
    ("The answer is 2\\sqrt{3}", "2", False, "2\\sqrt{3}"),
    # several numbers: the last one wins
    ("I have 3 apples and 5 pears, so 8 fruits.", "8", True, "8"),
    ("The product is (3)(4) = 12", "12", True, "12"),
    ("The answer is 50%.", "50", True, "50"),
    ("The answer is \\$18.90.", "18.9", True, "18.90"),
    # nothing to extract
    ("", "1", False, None),
    ("   \n ", "1", False, None),
    ("I am not sure how to solve this.", "1", False, None),
]


# Issue #9 ("make every verdict right"): one table per class of wrong verdicts. Every class has cases
# that the grader before the fix got wrong (see the comment above each table).

# A text cut off mid-clause has no answer; an explicit answer statement made earlier still counts.
# Before: "which is" and friends were not endings, so the last number of the cut-off text won.
TRUNCATED = [
    ("Start from 13 and subtract 4, which is", "4", False, None),
    ("Start from 13 and subtract 4, which is", "9", False, None),
    ("First add 12 and 1 to get", "1", False, None),
    ("So 25 + 17 - 8 gives", "8", False, None),
    ("We have 7 apples and", "7", False, None),
    ("Sarah reads 20 pages a day for 7 days, so we get", "7", False, None),
    ("The number of pages is 20 times 7, which is 140. Then we subtract", "140", False, None),
    ("3 + 4 = 7,", "7", False, None),
    ("Let me compute 6 * 7 step by step: 6 * 7 = 42. Next we need the", "42", False, None),
    ("In this case, we multiply 12 by the numerator", "12", False, None),
    ("3 + 4 = 7\n\nI hope this helps", "7", False, None),  # no final punctuation after prose: cut off
    # an explicit answer statement before the cut-off tail counts ...
    ("The answer is 9. Let me check: 13 - 4 is", "9", True, "9"),
    ("\\boxed{9}. Check: 13 - 4 =", "9", True, "9"),
    # ... unless the tail is a new answer statement being written
    ("The answer is 9. So the correct answer is", "9", False, None),
]

# A stated answer followed by a correction or retraction. Before: the first marker won ("12").
CORRECTED = [
    ("#### 12\nActually it is 13", "13", True, "13"),
    ("#### 12\nActually it is 13", "12", False, "13"),
    ("The answer is 12. Wait, 5 + 8 = 13, so it is 13.", "13", True, "13"),
    ("The answer is 12.\nCorrection: 13", "12", False, "13"),
    ("The answer is 12. Oops, I made a mistake: 5 + 8 = 13.", "13", True, "13"),
    ("The answer is 7. Wait, no, it's 8.", "7", False, "8"),
    ("\\boxed{12}\nWait, that is wrong.", "12", False, None),
    ("3 + 4 = 7. Wait, that is wrong.", "7", False, None),
    ("#### 12\nSorry, the answer should be", "12", False, None),
    # a soft cue with no new answer changes nothing
    ("The answer is 13. We actually just add 6 and 7.", "13", True, "13"),
    ("The answer is 7. Hmm, let me double-check: 3 + 4 = 7.", "7", True, "7"),
]

# Answer phrasings. Before: only "answer is"/"Answer:" were markers, so trailing chatter's last number
# won ("... 1 + 1 = 2" graded as 2) and value statements lost to stray numbers after them.
MARKERS = [
    ("The answer to this problem is 1. To double check, 1 + 1 = 2", "1", True, "1"),
    ("The answer to this problem is 1. To double check, 1 + 1 = 2", "2", False, "1"),
    ("The result is 28. I hope this helps with your 2 other questions!", "28", True, "28"),
    ("The final answer is 21, which we calculated from 3 numbers.", "21", True, "21"),
    ("The sum is 8, which is more than 5 apples.", "8", True, "8"),
    ("Adding them, 25 + 17 equals 42. Let me know if you have 3 more!", "42", True, "42"),
    ("Therefore, 34. Let me know if you have 2 more questions!", "34", True, "34"),
    ("So, x = 5. Hope this helps with your 2 other questions.", "5", True, "5"),
    ("So he has 10 apples. Nice job, 2 thumbs up!", "10", True, "10"),
    ("42 is the answer. (It took 3 steps.)", "42", True, "42"),
    ("The answer is 2 + 3, which equals 5.", "5", True, "5"),
    ("The answer is **13**, which is the total.", "13", True, "13"),
    ("The probability is $\\frac{1}{6}$, so there is a 1 in 6 chance.", "\\frac{1}{6}", True, "\\frac{1}{6}"),
    # a value statement that is a step of the computation does not win over the computation after it
    ("The sum of 25 and 17 is 42. Now subtract 8: 42 - 8 = 34.", "34", True, "34"),
    ("So, 25 + 17 = 42. Then 42 - 8 = 34.", "34", True, "34"),
    ("The result is 42. Then 42 - 8 = 34.", "34", True, "34"),
    # "answer" mentioned, not stated: the phrase must be a statement ("the answer to X is ...")
    ("To find the answer, we compute 3 + 4 = 7. Then 7 * 2 = 14.", "14", True, "14"),
]

# LaTeX and value notations. Before: \boxed{5!} was read as 5, powers were rejected as unevaluated
# arithmetic, and math-verify's partial parse of a longer candidate was accepted.
LATEX = [
    ("\\boxed{5!}", "120", True, "5!"),
    ("\\boxed{5!}", "5", False, "5!"),
    ("The answer is $5!$.", "120", True, "5!"),
    ("The answer is 5!", "5", True, "5"),  # prose: an exclamation, not a factorial
    ("The answer is 2^10.", "1024", True, "2^10"),
    ("$2^{10}$", "1024", True, "2^{10}"),
    ("So it is 2^10", "1024", True, "2^10"),
    ("\\boxed{10^{6}}", "1000000", True, "10^{6}"),
    ("The answer is 10^6", "6", False, "10^6"),
    ("\\boxed{1.5 \\times 10^3}", "1500", True, "1.5 \\times 10^3"),
    ("\\boxed{2^floor(n/2)}", "2", False, "2^floor(n/2)"),
    ("\\boxed{2^{n-1}}", "2^(n-1)", True, "2^{n-1}"),
    ("\\boxed{1 2}", "3", False, "1 2"),
    ("\\boxed{18 \\text{ dollars}}", "18", True, "18"),
]

# Multi-part answers. Before: reduced to one number ("3, 5" read as 3; "x=16 and x=81" as 81).
MULTI_PART = [
    ("The answer is 3, 5", "5", False, "3, 5"),
    ("The answer is 3, 5", "5, 3", True, "3, 5"),
    ("The answer is 2, 3, 5", "2, 3", False, "2, 3, 5"),
    ("\\boxed{x=16 \\text{ and } x=81}", "16, 81", True, "x=16 \\text{ and } x=81"),
    ("The solutions are x=16 and x=81.", "x=16 and x=81", True, "x=16 and x=81"),
    ("The solutions are x=16 and x=81.", "81", False, "x=16 and x=81"),
    ("Factoring gives (x-1)(x+2)=0, so x = 1 or x = -2.", "1,-2", True, "x = 1 or x = -2"),
    ("Factoring gives (x-1)(x+2)=0, so x = 1 or x = -2.", "-2", False, "x = 1 or x = -2"),
    ("\\boxed{(2, 3)}", "(2, 3)", True, "(2, 3)"),
    ("\\boxed{(2, 3)}", "2", False, "(2, 3)"),
    ("\\boxed{(2, 3)}", "(3, 2)", False, "(2, 3)"),
    ("\\boxed{x = \\pm 1}", "1, -1", True, "\\pm 1"),
    ("\\boxed{x=6, y=5}", "x=6, y=5", True, "x=6, y=5"),
    ("\\boxed{x=6, y=5}", "x=5, y=6", False, "x=6, y=5"),  # the names must agree
    ("\\boxed{\\{1, -2\\}}", "1,-2", True, "\\{1, -2\\}"),
]

# Procedural tasks (reasoning-gym chain_sum / basic_arithmetic: plain integers, often negative).
PROCEDURAL = [
    ("45 - 50 - 12 = -17", "-17", True, "-17"),
    ("-17", "-17", True, "-17"),
    ("The answer is -17.", "17", False, "-17"),
    ("-5 + 3 = -2", "-2", True, "-2"),
    ("The answer is 0.", "0", True, "0"),
    ("The result is -1,234.", "-1234", True, "-1,234"),
    ("12 - 30 = -18, so the answer is -18", "-18", True, "-18"),
]

# GSM8K and MATH answer formats (the training data's own conventions).
DATASET_FORMATS = [
    (
        (
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
        ),
        "72",
        True,
        "72",
    ),
    (
        (
            "Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
            "Final Answer: The final answer is $[2,5)$. I hope it is correct."
        ),
        "[2,5)",
        True,
        "[2,5)",
    ),
    (
        "Therefore, the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        True,
        "\\left( 3, \\frac{\\pi}{2} \\right)",
    ),
    (
        "We have $n = \\boxed{16}$.\nFinal Answer: The final answer is $16$. I hope it is correct.",
        "16",
        True,
        "16",
    ),
    ("So the result is $\\boxed{6-5i}$.", "6-5i", True, "6-5i"),
    # MetaMathQA's own format ("The answer is: X") after a LaTeX computation
    (
        "So $\\frac{1}{2} + \\frac{1}{4} = \\frac{3}{4}$.\nThe answer is: \\frac{3}{4}",
        "\\frac{3}{4}",
        True,
        "\\frac{3}{4}",
    ),
    ("We get $\\frac{1}{2} + \\frac{1}{4} = \\frac{3}{4}$.", "0.75", True, "\\frac{3}{4}"),
    # GSM8K calculator annotations, as models trained on GSM8K reproduce them (here cut before "####")
    ("Total: 120 + 120 = <<120+120=240>>240 miles.\n###", "240", True, "240"),
    (
        "Evelyn has the greatest average speed: $\\boxed{\\text{Evelyn}}$",
        "\\text{Evelyn}",
        True,
        "\\text{Evelyn}",
    ),
]

# REAL outputs of the embedded model (SmolLM2-135M-Instruct, chat template, the Answer system prompt,
# temperature 0.7 or greedy, 64-96 new tokens, so several are cut off), copied verbatim; the
# question each answers is in the comment. Most are wrong: a 135M model rarely gets these right.
REAL = [
    # real: 'What is 1 + 1?' (T=0.7); the old grader took the last number, 1
    (
        "To solve for 1 + 1, we can think of it as 1 + 1 as the sum of 1 and itself. Therefore, 1 + 1 = 2. This is the definition of the number 1 as the sum of two numbers.",
        "2",
        True,
        "2",
    ),
    # real: 'What is 1 + 1?' (greedy)
    (
        '1 + 1 = 2\n\nThis is a classic example of a simple equation that can be solved using basic arithmetic operations. In mathematics, this is known as a "1 + 1 = 2" identity, which is a fundamental property of arithmetic that holds true for all integers.',
        "2",
        True,
        "2",
    ),
    # real: 'What is 3 + 4?' (greedy)
    (
        "To solve this problem, we need to combine the numbers 3 and 4, which is 7. So, 3 + 4 = 7.",
        "7",
        True,
        "7",
    ),
    # real: 'What is 10 + 10?' (greedy)
    (
        "10 + 10 = 20\n\nThis is a classic example of a simple equation that can be solved using basic arithmetic operations. In this case, the answer is 20, which is the result of the addition of 10 and 1.",
        "20",
        True,
        "20",
    ),
    # real: 'What is 6 + 6?' (greedy)
    (
        "To solve this problem, we need to first find the sum of 6 and 6.\n\nThe sum of 6 and 6 is 12, which is the product of 6 and itself.\n\nSo, the answer is 12.\n\nThis problem is a classic example of",
        "12",
        True,
        "12",
    ),
    # real: 'What is 144 / 12?' (T=0.7); cut off mid-sentence - the old grader took the stray 12 as correct
    (
        "To solve a fraction with a denominator of 12, where the numerator 144 is the denominator, we can divide both the numerator and the denominator by 12. This can be done by multiplying both the numerator and the denominator by 12 and then multiplying both the numerator and denominator by 12.\n\nThe process of multiplying a number by itself a certain number of times is called a modulo division operation. In this case, multiplying the numerator",
        "12",
        False,
        None,
    ),
    # real: 'What is 2 + 3?' (T=0.7)
    (
        'The answer to this problem is 2 + 3, which equals 5.\n\nThis problem is a classic example of a logical reasoning error. When a mathematician solves a calculation of 2 + 3, they might think to themselves, "I don\'t know how to add 2 and 3. I need a guide to help me solve this problem."\n\nThe correct answer',
        "5",
        False,
        None,
    ),
    # real: 'Calculate 25 + 17 - 8.' (T=0.7)
    (
        "To calculate 25 + 17 - 8, we add the numbers together, which gives us 18. Now, we subtract 8 from this result, which gives us 21.\n\nThis is a straightforward mental math problem, so we'll just add 1 to both sides of the equation to get 21 as the answer.\n\nThe final answer is 21, which we calculated earlier to be 18.",
        "34",
        False,
        "21",
    ),
    # real: 'Calculate 25 + 17 - 8.' (T=0.7)
    (
        "To solve a mathematical equation, you should follow a straightforward procedure:\n\nFirst, separate the operations: 25, 17, -8.\n\nThe operation is the addition of 25 and 17.\n\nThe operation is addition.\n\nNow, you have 25 + 17 = 28.\n\nThe result is 28.\n\nThe final answer is 28.",
        "34",
        False,
        "28",
    ),
    # real: 'What is 4 * 2?' (greedy); cut off INSIDE a number ("1" of "10"?): undetectable, a known limit
    (
        "To solve this problem, we need to find the product of 4 and 2.\n\nFirst, we multiply 4 by 2, which gives us 8.\n\nNow, we add 2 to the result, which gives us 10.\n\nSo, the answer is 1",
        "8",
        False,
        "1",
    ),
    # real: 'A pencil costs 3 dollars. How much do 8 pencils cost?' (T=0.7)
    (
        "To solve this problem, let's break it down step by step. We know that a pencil costs 3 dollars, and we have a total of 8 pencils. We need to find out how many pencils are in 8. \n\nWe can calculate this by multiplying 8 by 3, since there are 8 pencils. This is 8 * 3 = 18 pencils. Now, we have 18 pencils in total. So, the answer",
        "24",
        False,
        None,
    ),
    # real: 'Sarah reads 20 pages a day. How many pages does she read in a week?' (T=0.7)
    (
        "To solve this problem, we need to break it down into manageable parts. First, we need to find the total number of pages Sarah reads in a week. Since Sarah reads 20 pages a day, she reads 20 * 60 = 120 pages in a week.\n\nNow, we have the answer: 120 pages.\n\nThis is the total number of pages Sarah reads in a week. To find this, we",
        "140",
        False,
        "120",
    ),
    # real: 'What is 13 - 4?' (T=0.7)
    (
        "To solve this problem, we need to first find the difference between 13 and 4, which is 17. Then we subtract 1 from the original number, so 13 - 1 = 14. Now we add 1 to the result of this subtraction. So 14 + 1 = 15.\n\nThis process continues until we reach the original number of 13 and 1, which is 14",
        "9",
        False,
        "14",
    ),
    # real: 'What is 2 + 2?' (greedy); cut off, and "is equivalent to 4" is no explicit answer statement
    (
        'To solve this problem, we need to think of it in terms of the operation of addition. In mathematics, the operation of addition is represented by the operation of "2 + 2" which is equivalent to 4.\n\nIn other words, 2 + 2 is equivalent to 4. This is',
        "4",
        False,
        None,
    ),
    # real: 'What is 8 - 3?' (greedy)
    (
        "To solve this problem, we need to find the difference between 8 and 3, which is 11. So, 8 - 3 = 11.\n\nThis is a classic example of a simple division problem, where we need to find the difference between two numbers. In this case,",
        "5",
        False,
        None,
    ),
    # real: 'What is 9 + 8?' (T=0.7)
    (
        "To solve this problem, we need to calculate 9 + 8 and find the outcome of multiplying them together.\n\nFirst, we multiply 9 by 9: 9 * 9 = 81.\nThen, we add the result to 81.\n\nSo, 9 + 81 = 9 * 81 = 729.",
        "17",
        False,
        "729",
    ),
    # real: 'Calculate 3 - 10.' (T=0.7)
    (
        "To calculate 3 - 10, we need to subtract 3 from 10.\n\n3 - 10 = 1\n\nSo, the answer is 1.",
        "-7",
        False,
        "1",
    ),
    # real: 'What is 2 + 3?' (T=0.7)
    (
        "To solve this problem, we need to calculate 2 + 3 and find the outcome of multiplying them together.\n\nLet's first calculate the numbers: 2 + 3 equals 5. Now, we can multiply these two numbers together: 5 * 3 = 15.\n\nSo, the answer is 15. If you want to calculate this operation manually",
        "5",
        False,
        "15",
    ),
]

# A whole answer that is one short sentence around a number: the number, not the sentence; words that
# belong to an answer expression keep it whole. Numbers in scientific notation compare by value.
SHORT_SENTENCES = [
    ("She pays $12.50.", "12.5", True, "12.50"),
    ("She pays 12.50.", "12.5", True, "12.50"),
    ("He has 7 left", "7", True, "7"),
    ("They need 8 buses.", "9", False, "8"),
    ("x = 1 or x = -2", "1, -2", True, "x = 1 or x = -2"),
    ("No", "No", True, "No"),
    ("The answer is 1e3", "1000", True, "1e3"),
    ("The answer is 1.5E6.", "1500000", True, "1.5E6"),
    ("The answer is 2e-3", "0.002", True, "2e-3"),
    ("The answer is 1e3", "100", False, "1e3"),
    ("Answer: 7 (seven)", "7", True, "7"),
    ("The answer is 12 (in total).", "13", False, "12"),
]

# Times and ratios are one value: never just the number before the colon (that made 3:45 "equal" 3:30).
# Two times compare as written (AM/PM dropped); otherwise as ratios (4:6 = 2:3).
TIMES_AND_RATIOS = [
    ("The answer is 3:45", "3:30", False, "3:45"),
    ("\\boxed{3:45}", "3:45", True, "3:45"),
    ("So the time is 3:45 PM.", "3:45", True, "3:45"),
    ("She arrives at 10:05 a.m.", "10:05", True, "10:05"),
    ("The answer is 4:30", "2:15", False, "4:30"),
    ("The ratio is 2:3", "2:3", True, "2:3"),
    ("The ratio is 2:5", "2:3", False, "2:5"),
    ("The ratio is 4:6", "2:3", True, "4:6"),
    ("He left at 3:30 and came back 2 hours later at 5:30", "5:30", True, "5:30"),
]

NEW_CASES = TRUNCATED + CORRECTED + MARKERS + LATEX + MULTI_PART + PROCEDURAL + DATASET_FORMATS + REAL
# A choice letter alone is the answer (MATH's "\\text{(C)}" golds); "a" after "is" stays the article.
CHOICES = [
    ("\\boxed{A}", "A", True, "A"),
    ("The answer is \\boxed{A}", "\\text{(A)}", True, "A"),
    ("The answer is (C)", "\\text{(C)}", True, "C"),
    ("The answer is (C)", "\\text{(D)}", False, "C"),
    ("The answer is a", "A", False, None),
]
# Mixed numbers are their value ("3 1/2" = 7/2, not 3 or 1/2); a currency code before the number is not part
# of the answer.
MIXED_AND_CURRENCY = [
    ("The answer is 3 1/2", "3.5", True, "7/2"),
    ("So she has 3 1/2 cups.", "7/2", True, "7/2"),
    ("The answer is -2 1/4", "-9/4", True, "-9/4"),
    ("The answer is 3 1/2", "3/2", False, "7/2"),
    ("The answer is USD 12", "12", True, "12"),
    ("The answer is Rs. 40", "41", False, "40"),
]
# LaTeX number formatting: a thin-space thousands separator joins the groups (it was read as "1" of "1\\,000"),
# a value wrapped in \\text / \\mathbf is the value; a word answer in \\text stays whole.
LATEX_NUMBERS = [
    ("\\boxed{1\\,000}", "1000", True, "1000"),
    ("\\boxed{1\\,000}", "1", False, "1000"),
    ("The answer is 1\\,234\\,567.", "1234567", True, "1234567"),
    ("\\boxed{1{,}000}", "1000", True, "1000"),
    ("\\boxed{\\mathbf{12}}", "12", True, "12"),
    ("\\boxed{\\text{5 apples}}", "5", True, "5"),
    ("\\boxed{\\text{no solution}}", "\\text{no solution}", True, "\\text{no solution}"),
]
# Hedges: a second value offered in place of the first is no single answer, whichever value is gold (grading
# either one correct would reward hedging); a value with a condition or a multi-part answer is not a hedge.
HEDGES = [
    ("The answer is \\boxed{5} or \\boxed{6}.", "6", False, None),
    ("The answer is \\boxed{5} or \\boxed{6}.", "5", False, None),
    ("The answer is \\boxed{6}. Or maybe \\boxed{7}.", "7", False, None),
    ("The answer is 6, or maybe 7.", "6", False, None),
    ("The answer is 6, or maybe 7.", "7", False, None),  # the last number must not be read instead
    ("So the total is 6 (or 7).", "7", False, None),
    ("The answer is 6 to 7 hours.", "6", False, None),
    ("The answer is 7 R 2.", "7", False, None),
    ("The answer is 7 remainder 2.", "2", False, None),
    ("The answer is 6 or more.", "6", True, "6"),
    ("The answer is 6, or 6.0.", "6", True, "6"),  # the same value twice is not a hedge
    ("The answer is 1,200 (or 1200).", "1200", True, "1,200 (or 1200)"),
    ("The answer is 6, or 6.5.", "6", False, "6, or 6.5"),  # two values: a two-part answer, not 6
    ("The answer is \\boxed{6}. Or, checking again: \\boxed{6}.", "6", True, "6"),
    ("First \\boxed{5}, then adding 1 gives \\boxed{6}.", "6", True, "6"),
]
# An answer in words is the number it names; a number word inside a phrase is not an answer.
NUMBER_WORDS = [
    ("The answer is twelve.", "12", True, "12"),
    ("The answer is twenty-one apples.", "21", True, "21"),
    ("The answer is one hundred and five.", "105", True, "105"),
    ("The answer is two thousand three hundred.", "2300", True, "2300"),
    ("The answer is seven.", "8", False, "7"),
    ("The answer is one of the two numbers, 4.", "1", False, "one of the two numbers, 4"),
    ("The answer is three times 4, which is 12.", "3", False, "12"),
    ("The answer is ten to twelve.", "10", False, None),  # a range in words is no single number
    ("The answer is ten percent.", "10", False, None),  # left to the other rules, not read as 10
]
NEW_CASES += SHORT_SENTENCES + TIMES_AND_RATIOS + CHOICES + MIXED_AND_CURRENCY + LATEX_NUMBERS
# Written forms of one value: an escaped dollar inside $...$ (it was read as the span's end), a sign before a
# currency sign, the computation in brackets after the value, "x" as a times sign, words with their digits.
WRITTEN_FORMS = [
    ("The answer is $\\$42$.", "42", True, "42"),
    ("So $x = 5$ and $\\$3$ is left. The answer is $\\$3$.", "3", True, "3"),
    ("The answer is -$5.", "-5", True, "-5"),
    ("The answer is -$5.", "5", False, "-5"),
    ("The answer is 8 (10 - 2).", "8", True, "8"),
    ("The answer is 8 (10-2).", "10", False, "8"),
    ("The answer is 2 x 4 = 8.", "8", True, "8"),
    ("The answer is 2 x 4 = 8.", "2", False, "8"),  # it was read as "2 x ...": the 2
    ("The answer is 2 x 4.", "2", False, "2 x 4"),
    ("The answer is eight (8).", "8", True, "8"),
    ("The answer is eight (9).", "9", False, "eight (9)"),
]
NEW_CASES += HEDGES + NUMBER_WORDS + WRITTEN_FORMS
# LaTeX spacing (thin, medium, thick, negative space, control space, tie) is layout, not part of the value.
LATEX_SPACING = [
    ("\\boxed{12\\,\\%}", "12", True, "12 \\%"),
    ("\\boxed{5\\;\\text{cm}}", "5", True, "5"),
    ("\\boxed{5~\\text{cm}}", "5", True, "5"),
    ("\\boxed{5\\ \\text{cm}}", "6", False, "5"),
    ("\\boxed{5\\!}", "5", True, "5"),
    ("The answer is $5\\,\\text{cm}$.", "5", True, "5"),
    ("\\boxed{1\\,000\\,000}", "1000000", True, "1000000"),
]
# One-word categorical answers: a closed class after an answer phrase; other prose words stay no answer. Inside
# a closed box a single letter is a variable, not the article.
CATEGORICAL = [
    ("The answer is yes.", "Yes", True, "yes"),
    ("The answer is no.", "yes", False, "no"),
    ("The answer is even.", "\\text{even}", True, "even"),
    ("So the answer is Sunday", "\\text{Sunday}", True, "Sunday"),
    ("The answer is Monday.", "\\text{Tuesday}", False, "Monday"),
    ("The answer is correct. So 5.", "5", True, "5"),
    ("Is 15 divisible by 4? The answer is no. We need 4 boxes.", "4", True, "4"),  # a sub-question's answer
    ("Is 15 divisible by 4? The answer is no. So we need 15/4 = 3.75 boxes. So 4 boxes.", "4", True, "4"),
    ("Is 12 even? The answer is yes.", "\\text{yes}", True, "yes"),
    ("The answer is simple: 2 + 3 = 5.", "5", True, "5"),
    ("\\boxed{a}", "a", True, "a"),
    ("\\boxed{a}", "b", False, "a"),
    ("$\\boxed{a+b}$", "b+a", True, "a+b"),
]
# A unit abbreviation written against its number in prose is the number's unit (in math, "5m" stays 5m); a
# letter x between a mantissa and a power of ten is a times sign.
GLUED_UNITS = [
    ("The answer is 18km.", "18", True, "18"),
    ("So she runs 2.5kg of rice.", "2.5", True, "2.5"),
    ("The answer is 12m^2.", "12", True, "12"),
    ("The answer is 3hrs", "4", False, "3"),
    ("\\boxed{5m}", "5", False, "5m"),
    ("The answer is 2x.", "2", False, "2x"),
    ("The answer is 1.8 x 10^3", "1800", True, "1.8 \\times 10^3"),
    ("The answer is 1.8 x 10^3", "180", False, "1.8 \\times 10^3"),
]
# A repeating decimal is the exact fraction it names; a list written inside \\text{} is a list.
REPEATING_AND_TEXT_LISTS = [
    ("\\boxed{\\frac{1}{3}}", "0.\\overline{3}", True, "\\frac{1}{3}"),
    ("\\boxed{0.\\overline{36}}", "\\frac{4}{11}", True, "0.\\overline{36}"),
    ("\\boxed{1.2\\overline{36}}", "\\frac{68}{55}", True, "1.2\\overline{36}"),
    ("The answer is 0.(3)", "\\frac13", True, "0.(3)"),
    ("\\boxed{0.36}", "0.\\overline{36}", False, "0.36"),
    ("\\boxed{0.333}", "0.\\overline{3}", False, "0.333"),
    ("\\boxed{A, C}", "\\text{A, C}", True, "A, C"),
    ("\\boxed{C, A}", "\\text{A, C}", True, "C, A"),
    ("\\boxed{A, B}", "\\text{A, C}", False, "A, B"),
    ("\\boxed{A}", "\\text{A, C}", False, "A"),
]
# A remark in brackets after the value that mixes words and numbers, or shows the computation, is not part of
# the value; a bare second number in brackets or a hedge stays no single value. An ordinal is its number.
REMARKS_AND_ORDINALS = [
    ("The answer is 27 (3 bags of 9 marbles).", "27", True, "27"),
    ("The answer is 27 [3 x 9].", "27", True, "27"),
    ("The answer is 27 (3 bags of 9 marbles).", "9", False, "27"),
    ("The answer is 6 (7).", "6", False, "6 (7)"),
    ("The answer is 5 (maybe 6)", "5", False, None),
    ("The answer is 27th.", "27", True, "27"),
    ("The answer is 3rd.", "2", False, "3"),
]
# Unicode notation and markup are the ASCII / LaTeX they stand for; a sign in words is a sign; quotes and the
# same value in two notations ("0.5 or ½") are not two answers. A union of intervals is not a value with a remark.
NOTATION = [
    ("The answer is 5².", "25", True, "5^2"),
    ("The answer is x² + 1.", "x^2+1", True, "x^2 + 1"),
    ("The answer is 3½.", "3.5", True, "7/2"),
    ("The answer is ½.", "\\frac12", True, "1/2"),
    ("The answer is 2√3.", "2\\sqrt{3}", True, "2\\sqrt{3}"),
    ("The answer is √(x+1).", "\\sqrt{x+1}", True, "\\sqrt{x+1}"),
    ("The answer is π/2.", "\\frac{\\pi}{2}", True, "\\pi /2"),
    ("The answer is ∞.", "\\infty", True, "\\infty"),
    ("The answer is １８.", "18", True, "18"),
    ("The answer is 1\u202f000.", "1000", True, "1 000"),
    ("The answer is <b>18</b>.", "18", True, "18"),
    ("<answer>18</answer>", "19", False, "18"),
    ("The answer is 2<sup>10</sup>.", "1024", True, "2^{10}"),
    ("The answer is “18”.", "18", True, "18"),
    ("The answer is negative five.", "-5", True, "-5"),
    ("The answer is minus 5.", "5", False, "-5"),
    ("The answer is 0.5 or ½.", "0.5", True, "0.5"),
    ("The answer is 0.5 or ⅓.", "0.5", False, "0.5 or 1/3"),
    ("\\boxed{(-\\infty, 0) \\cup (2, \\infty)}", "(-\\infty, 0) \\cup (1, \\infty)", False, "(-\\infty, 0) \\cup (2, \\infty)"),
    ("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}", "(-∞, 0) ∪ (1, ∞)", True, "(-\\infty, 0) \\cup (1, \\infty)"),
]
# A number with a scale word is its value ("1.5 million" is 1500000, not 1.5), marked or not.
SCALE_WORDS = [
    ("The answer is 1.5 million.", "1500000", True, "1500000"),
    ("The answer is 1.5 million dollars.", "1.5", False, "1500000"),
    ("The answer is $1.2 billion", "1200000000", True, "1200000000"),
    ("So it costs $3 thousand.", "3000", True, "3000"),
    ("He earned 2.5 million", "2500000", True, "2500000"),
    ("There are hundreds of them, 5 in total.", "5", True, "5"),
]
NEW_CASES += LATEX_SPACING + CATEGORICAL + GLUED_UNITS + REPEATING_AND_TEXT_LISTS + REMARKS_AND_ORDINALS + NOTATION
# A rate's unit after a slash is a unit ("12/hour"; "12/x" stays an expression); a "$" with no closing "$" is
# a currency sign, not the start of math ("$5!" is an exclamation, "$5!$" a factorial).
RATES_AND_CURRENCY = [
    ("The answer is $12/hour.", "12", True, "12"),
    ("The answer is 12/hr", "13", False, "12"),
    ("The answer is 12/x", "12", False, "12/x"),
    ("The answer is $5!", "5", True, "5"),
    ("The answer is $5!$", "120", True, "5!"),
]
# One measure in mixed units is one value, right in any unit it names ("2 hours and 30 minutes" is 2.5 hours
# and 150 minutes, never 32); units of two measures, or out of order, are not one quantity.
COMPOUND_QUANTITIES = [
    ("The answer is 5 dollars and 50 cents.", "5.50", True, "5 dollars and 50 cents"),
    ("The answer is 5 dollars and 50 cents.", "550", True, "5 dollars and 50 cents"),
    ("The answer is 5 dollars and 50 cents.", "55", False, "5 dollars and 50 cents"),
    ("The answer is $5 and 50 cents.", "5.5", True, "5 and 50 cents"),
    ("So the total time is 2 hours and 30 minutes.", "150", True, "2 hours and 30 minutes"),
    ("So the total time is 2 hours and 30 minutes.", "2.5", True, "2 hours and 30 minutes"),
    ("So the total time is 2 hours and 30 minutes.", "32", False, "2 hours and 30 minutes"),
    ("The answer is 3 feet 4 inches.", "40", True, "3 feet 4 inches"),
    ("The answer is 1 h 15 min.", "75", True, "1 h 15 min"),
    ("The answer is 1 pound 4 ounces in total.", "20", True, "1 pound 4 ounces in total"),
    ("\\boxed{2 \\text{ hours } 30 \\text{ minutes}}", "150", True, "2 \\text{ hours } 30 \\text{ minutes}"),
    ("The answer is 30 minutes 2 hours.", "150", False, "30"),
    ("The answer is 2 hours and 5 dollars.", "7", False, "2 hours and 5 dollars"),
    # one quantity stated twice in other units is one answer; two different quantities are not
    ("The answer is 3.5 hours, or 3 hours and 30 minutes.", "3.5", True, "3.5"),
    ("The answer is 90 minutes, i.e. 1.5 hours.", "90", True, "90"),
    ("The answer is 90 minutes, or 2 hours.", "90", False, "90 minutes, or 2 hours"),
]
# A smaller number after a scaled one adds to it, marked or not; a second clause does not.
SCALED_SUMS = [
    ("The answer is 12 thousand 500.", "12500", True, "12500"),
    ("It cost 2 million 300 thousand 5", "2300005", True, "2300005"),
    ("She earned 12 thousand 500", "12500", True, "12500"),
    ("There were 20 thousand people and 5", "5", True, "5"),
]
# "A: 18" on a line of its own is an answer label; a line that goes on is the start of a solution, and a
# "B:" line after it makes the lines a list of choices.
ANSWER_LABELS = [
    ("A: 18", "18", True, "18"),
    ("Q: How many are left?\nA: 18.", "18", True, "18"),
    ("A: 16 - 3 = 13 eggs. She sells them for 2 dollars each, so she makes 13 * 2 = 26 dollars.", "26", True, "26"),
    ("A: 12\nB: 15\nC: 18", "12", False, "18"),
]
# An inequality in one variable is the interval it describes, and "or" joins intervals into a union.
INEQUALITIES = [
    ("The solution is $2 \\le x < 5$.", "[2,5)", True, "2 \\le x < 5"),
    ("The solution is $2 \\le x < 5$.", "(2,5)", False, "2 \\le x < 5"),
    ("\\boxed{x > 3}", "(3, \\infty)", True, "x > 3"),
    ("\\boxed{3 < x}", "(3, \\infty)", True, "3 < x"),
    ("\\boxed{x \\geq -\\frac{1}{2}}", "[-0.5, \\infty)", True, "x \\geq -\\frac{1}{2}"),
    ("\\boxed{[2, 5)}", "2 \\leq x < 5", True, "[2, 5)"),
    ("\\boxed{x < 1 \\text{ or } x > 2}", "(-\\infty,1)\\cup(2,\\infty)", True, "x < 1 \\text{ or } x > 2"),
    ("\\boxed{x < 1 \\text{ or } x > 2}", "(-\\infty,1)\\cup(3,\\infty)", False, "x < 1 \\text{ or } x > 2"),
    ("\\boxed{x < 1 \\text{ or } y > 2}", "(-\\infty,1)\\cup(2,\\infty)", False, "x < 1 \\text{ or } y > 2"),
]
# Fractions and dozens in words are their values ("third" alone is an ordinal, "half of them" no value); a
# whole number "and" a fraction is a mixed number; a remark in words may stand before the unit; "1 in 6" is a
# probability; a percentage is its value over 100 when the other side has no percent sign.
WORDS_AND_PERCENT = [
    ("The answer is two and a half hours.", "2.5", True, "5/2"),
    ("The answer is 3 and a half.", "3.5", True, "7/2"),
    ("The answer is 3 and 1/2.", "3.5", True, "7/2"),
    ("The answer is two thirds.", "\\frac{2}{3}", True, "2/3"),
    ("The answer is a dozen.", "12", True, "12"),
    ("The answer is half.", "0.5", True, "1/2"),
    ("The answer is half of them.", "0.5", False, None),
    ("The answer is 18 (eighteen) apples.", "18", True, "18"),
    ("The probability is 1 in 6.", "\\frac{1}{6}", True, "1/6"),
    ("The answer is 0.25.", "25\\%", True, "0.25"),
    ("The answer is 0.25.", "25", False, "0.25"),
    ("The answer is 2.5.", "25\\%", False, "2.5"),
]
NEW_CASES += WORDS_AND_PERCENT
# A matrix's row break "\\\\" is structure, not LaTeX spacing (a control space "\\ " is).
MATRICES = [
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True, "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False, "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("\\boxed{12\\ \\text{cm}}", "12", True, "12"),
]
NEW_CASES += MATRICES
# A value statement's noun phrase may hold a copula of its own (the value follows the last one); a new question
# after an answer statement is a continuation past the answer, whose answers are not this text's; "about 5"
# states 5.
CONTINUATIONS = [
    ("The remainder when 17 is divided by 5 is 2.", "2", True, "2"),
    ("The answer is 42.\n\nQuestion: What is 2+2?\nAnswer: 4", "42", True, "42"),
    ("Question: What is 6 * 7?\nThe answer is 42.", "42", True, "42"),
    ("6 * 7 = 42\nQ: What is 2+2?\nA: 4", "4", True, "4"),  # no answer statement before the new question
    ("The answer is about 5.", "5", True, "5"),
    ("The answer is approximately 3.33.", "10/3", False, "3.33"),
]
NEW_CASES += CONTINUATIONS
NEW_CASES += SCALE_WORDS + RATES_AND_CURRENCY + COMPOUND_QUANTITIES + SCALED_SUMS + ANSWER_LABELS + INEQUALITIES


@pytest.mark.parametrize(("text", "gold", "correct", "extracted"), CASES + NEW_CASES)
def test_grade_table(text: str, gold: str, correct: bool, extracted: str | None) -> None:
    assert grade(text, gold) == Grade(correct, extracted)


def test_table_is_large() -> None:
    assert len(CASES) + len(NEW_CASES) >= 60
    assert len(REAL) >= 10


@pytest.mark.parametrize(
    ("gold", "pred"),
    [("13", "13.0"), ("1234", "1,234"), ("-4", "-4"), ("0.5", "0.50"), ("7", "+7"), ("1000", "1,000")],
)
def test_fast_numeric_path_agrees_with_math_verify(gold: str, pred: str) -> None:
    from math_verify import parse, verify

    assert answers_match(gold, pred) is True
    assert verify(parse(f"${gold}$"), parse(f"${pred}$")) is True


@pytest.mark.parametrize(("gold", "pred"), [("13", "-13"), ("4", "-4"), ("12", "13"), ("0.5", "5")])
def test_numbers_that_differ(gold: str, pred: str) -> None:
    assert answers_match(gold, pred) is False


def test_grade_in_worker_thread() -> None:
    """math-verify's signal-based timeouts only work in the main thread; grade() must work anywhere."""
    results: list[Grade] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(grade("Answer: $\\frac{3}{4}$", "0.75"))
            results.append(grade("\\boxed{\\frac{1}{2}}", "\\frac{2}{4}"))
            results.append(grade("12 + 1 =", "13"))
        except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=30)
    assert not errors
    assert results == [Grade(True, "\\frac{3}{4}"), Grade(True, "\\frac{1}{2}"), Grade(False, None)]


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{",
        "\\boxed{}",
        "$$",
        "\\frac{",
        "}}}{{{",
        "\\boxed{\\frac{1}{0}}",
        "=" * 500,
        "9" * 5000,
        "\x00",
    ],
)
def test_never_raises_on_garbage(text: str) -> None:
    g = grade(text, "1")
    assert isinstance(g, Grade)
    assert g.correct is False


def test_non_string_prediction() -> None:
    assert grade(None, "1") == Grade(False, None)  # type: ignore[arg-type]


def test_extract_answer_priority() -> None:
    # boxed beats "answer is", which beats the last number
    assert extract_answer("The answer is 5. Final: \\boxed{6}. Then 7") == "6"
    assert extract_answer("#### 4\nThe answer is 5") == "4"
    assert extract_answer("The answer is 5, not 6 or 7") == "5"


@pytest.mark.parametrize(
    "text",
    [
        "The answer is " + "1 + " * 20_000 + "1",  # very long text
        "x" * 200_000 + " so the answer is 7.",  # the answer beyond MAX_TEXT_CHARS from the start
        "\\boxed{" + "{" * 5_000 + "7" + "}" * 5_001,  # deep braces
        "\\boxed{" + "\\frac{" * 300 + "1" + "}{2}" * 300 + "}",  # deep LaTeX nesting
        "\\boxed{10^{10^{10}}}",  # a power tower sympy would try to evaluate
        "\\boxed{9^{999999999}}",  # a huge power
        "\\boxed{100000!}",  # a huge factorial
        "The answer is " + ", ".join(str(i) for i in range(3_000)),  # a huge multi-part answer
        "Wait, " * 5_000 + "the answer is 7",
        ("The sum is 8" + ". " * 3 + "\n") * 3_000,
        "\\boxed{1 (" + "a" * 20_000 + ")}",  # a long word remark after a value
        "The answer is 1 (" + "a " * 5_000 + ")",  # a remark of many words
        "The answer is " + "3:" * 10_000 + "4",  # a long chain of colons
        "So " + "1 1/2 " * 3_000 + "cups",  # many mixed numbers
        "The answer is " + "twenty " * 20_000 + "one",  # a long run of number words
        "The answer is " + "\\boxed{5} or " * 3_000 + "\\boxed{6}",  # many hedged boxes
        "The answer is 6" + ", or maybe" * 10_000 + " 7",  # a long hedge
        "The answer is $" + "\\$" * 20_000 + "7$",  # many escaped dollars in a math span
        "The answer is 8 (" + "1 + " * 20_000 + "1)",  # a long computation in brackets
        "The answer is " + "2 x " * 20_000 + "4",  # a long chain of times signs
    ],
)
def test_pathological_inputs_are_fast(text: str) -> None:
    """grade() runs for every rollout: it never raises and stays fast on whatever a model emits."""
    start = time.perf_counter()
    g = grade(text, "7")
    assert isinstance(g, Grade)
    assert time.perf_counter() - start < 5.0


def test_pathological_inputs_in_a_thread() -> None:
    """Without signal timeouts (worker threads), the input bounds alone must keep math-verify quick."""
    texts = ["\\boxed{10^{10^{10}}}", "\\boxed{100000!}", "\\boxed{2^{" + "9" * 40 + "}}"]
    done: list[Grade] = []
    t = threading.Thread(target=lambda: done.extend(grade(x, "1") for x in texts))
    start = time.perf_counter()
    t.start()
    t.join(timeout=30)
    assert len(done) == len(texts) and not any(g.correct for g in done)
    assert time.perf_counter() - start < 10.0


def test_long_answer_near_the_end_is_still_read() -> None:
    assert grade("blah " * 10_000 + "The answer is 42.", "42") == Grade(True, "42")


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("2 hours and 30 minutes", {Fraction(5, 2), Fraction(150)}),
        ("3 weeks, 2 days", {Fraction(23, 7), Fraction(23)}),
        ("1 km 250 m", {Fraction(5, 4), Fraction(1250)}),
        ("2 \\text{ h } 30 \\text{ min}", {Fraction(5, 2), Fraction(150)}),
        ("2 hours", None),  # one piece: a number with its unit
        ("2 hours 3 hours", None),  # a unit twice
        ("30 minutes 2 hours", None),  # smaller unit first
        ("2 kg 300 m", None),  # two measures
        ("3 apples and 4 oranges", None),
        ("2 hours and 30 minutes because 150 / 60 = 2.5", None),  # prose after the quantity
    ],
)
def test_compound_quantities(text: str, values: set[Fraction] | None) -> None:
    found = compound_quantity(text)
    assert (found.values if found else None) == values


@pytest.mark.parametrize(
    ("text", "intervals"),
    [
        ("2 \\le x < 5", ([("2", True, "5", False)], True)),
        ("5 > x \\geq 2", ([("2", True, "5", False)], True)),
        ("x < 1 or x > 2", ([("-oo", False, "1", False), ("2", False, "oo", False)], True)),
        ("\\left[2, \\infty\\right]", ([("2", True, "oo", False)], False)),  # an infinite end is open
        ("x < 1 or y > 2", None),  # two variables
        ("2x < 4", None),  # not a bound on a variable
        ("2 < x > 5", None),  # a chain that turns
        ("(1, 2, 3)", None),  # a triple
        ("x = 5", None),
    ],
)
def test_intervals(text: str, intervals: tuple | None) -> None:
    assert as_intervals(text) == intervals
