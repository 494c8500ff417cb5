"""`flowdpo judge`: which trace source writes better solutions? A pairwise LLM judge (the paper used GPT-4o)
over any OpenAI-compatible chat endpoint (OpenAI, a vLLM server, ...), on the kept compile traces.

After `flowdpo compile`, every source holds one correct trace for the SAME questions (equal-data rule), so
each question gives one pair (trace of source A, trace of source B). The judge sees the question and both
solutions and answers "A" or "B". Position bias is controlled by asking twice with the order swapped: a
source wins a question only if the judge prefers it in both orders; otherwise the question is a tie
(inconsistent verdicts) or invalid (a reply without a verdict). Reported: wins of each source, ties,
invalid, and the win rate of A among decided questions with a 95% Wilson interval.

Results go to compile/judge/<a>__vs__<b>.json (verdicts per question included) and can be rerun: a finished
comparison with the same judge settings is reused.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from typing import Any

from flowdpo.compile.common import CompileError
from flowdpo.storage import ObjectStore, RunLayout

SYSTEM_PROMPT = (
    "You are an expert math teacher. You compare two step-by-step solutions to the same problem. Both reach "
    "the correct final answer. Judge which solution is better: clearer, more rigorous reasoning, no wasted or "
    "wrong steps. Reply with a single letter: A or B."
)
USER_TEMPLATE = "Problem:\n{question}\n\nSolution A:\n{a}\n\nSolution B:\n{b}\n\nWhich solution is better? Reply A or B."
_VERDICT = re.compile(r"\b([AB])\b")


def parse_verdict(text: str) -> str | None:
    """'A' / 'B' from the judge's reply (the first standalone letter), or None when there is no verdict."""
    m = _VERDICT.search(text.strip().removeprefix("Solution").strip())
    return m.group(1) if m else None


class ChatJudge:
    """A chat-completions client: one short greedy completion per prompt."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 120.0):
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), headers=headers)

    def ask(self, question: str, a: str, b: str) -> str:
        import httpx

        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": USER_TEMPLATE.format(question=question, a=a, b=b)},
            ],
            "max_tokens": 4,
            "temperature": 0.0,
        }
        try:
            r = self._http.post(f"{self.url}/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise CompileError(f"judge endpoint {self.url} unreachable: {e}") from None
        if r.status_code != 200:
            raise CompileError(f"judge endpoint {self.url} answered HTTP {r.status_code}: {r.text[:300]}")
        return r.json()["choices"][0]["message"]["content"] or ""


def compare_sources(
    store: ObjectStore, judge: ChatJudge, a: str, b: str, *, limit: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Judge source `a` against source `b` on their shared kept questions (both orders per question)."""
    from flowdpo.report.stats import wilson_interval

    if a == b:
        raise CompileError("judge: pick two different trace sources")
    traces = {}
    for s in (a, b):
        key = RunLayout.compile_traces(s)
        if not store.exists(key):
            raise CompileError(f"judge: no traces of source {s!r} in {store.uri} (run `flowdpo compile` first)")
        traces[s] = {t["exampleId"]: t for t in store.get_jsonl(key)}
    ids = [i for i in traces[a] if i in traces[b]]
    if not ids:
        raise CompileError(f"judge: sources {a!r} and {b!r} share no kept question")
    if limit is not None and limit < len(ids):
        ids = sorted(random.Random(seed).sample(ids, limit), key=ids.index)
    settings = {"judgeUrl": judge.url, "judgeModel": judge.model, "questions": ids, "prompt": SYSTEM_PROMPT}
    done = store.get_json_or(RunLayout.compile_judge(a, b))
    if done and done.get("settings") == settings:
        return done

    verdicts, counts = [], {"winsA": 0, "winsB": 0, "ties": 0, "invalid": 0}
    for qid in ids:
        ta, tb = traces[a][qid], traces[b][qid]
        first = parse_verdict(judge.ask(ta["question"], ta["trace"], tb["trace"]))  # a shown as A
        second = parse_verdict(judge.ask(ta["question"], tb["trace"], ta["trace"]))  # a shown as B
        if first is None or second is None:
            outcome = "invalid"
        elif first == "A" and second == "B":
            outcome = "winsA"
        elif first == "B" and second == "A":
            outcome = "winsB"
        else:
            outcome = "ties"  # the judge preferred the same position both times
        counts[outcome] += 1
        verdicts.append({"exampleId": qid, "aFirst": first, "aSecond": second, "outcome": outcome})
    decided = counts["winsA"] + counts["winsB"]
    lo, hi = wilson_interval(counts["winsA"], decided)
    result = {
        "a": a,
        "b": b,
        "settings": settings,
        **counts,
        "questions": len(ids),
        "winRateA": counts["winsA"] / decided if decided else None,
        "winRateA95": [lo, hi] if decided else None,
        "verdicts": verdicts,
        "updatedAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    store.put_json(RunLayout.compile_judge(a, b), result)
    return result


def format_result(r: dict[str, Any]) -> str:
    head = f"{r['a']} vs {r['b']} on {r['questions']} questions (each judged in both orders):"
    line = f"  wins {r['a']} {r['winsA']}, wins {r['b']} {r['winsB']}, ties {r['ties']}, invalid {r['invalid']}"
    if r["winRateA"] is None:
        return f"{head}\n{line}\n  no decided question"
    lo, hi = r["winRateA95"]
    return f"{head}\n{line}\n  win rate of {r['a']}: {100 * r['winRateA']:.1f}% (95% CI {100 * lo:.1f}%-{100 * hi:.1f}%)"
