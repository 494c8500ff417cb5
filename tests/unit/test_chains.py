"""The flow as independent request chains (flowdpo/flow/chains.py) on a scripted backend that records
concurrency: the same rollouts and pairs as the lockstep engine, at most `in_flight` requests outstanding
and refilled as soon as one returns, every request of an example on the versions pinned when it was
admitted. The same engine on the real vLLM server: tests/integration/test_vllm_chains.py."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from flowdpo.data import Example
from flowdpo.flow.chains import ChainSource, ChainWork, ListSource, run_chains
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import mine_pairs, rollout_examples
from flowdpo.spec import BaselinesSpec, FlowSpec
from tests.support.scripted import CharTokenizer, ScriptedBackend

EX = Example(id="t-000001", question="What is 2 + 3?", answer="5", source="test")
ENDS_WITH_PERIOD = lambda text: 1.0 if text.rstrip().endswith(".") else 0.0
SCRIPT = {
    "": ["2 + 3", "2 + 4"],
    "2 + 3": [" = 5.", " = 7."],
    "2 + 4": [" = 6."],
    "2 + 3 = 5.": [" Done."],
}


class ChainBackend(ScriptedBackend):
    """ScriptedBackend with `pin()`: each request sleeps `delay` (a server computing) and is counted while
    outstanding; `versions` can be switched while requests run."""

    def __init__(self, *a, delay: float = 0.0, **kw):
        super().__init__(*a, **kw)
        self.delay = delay
        self.lock = threading.Lock()
        self.now = 0  # requests outstanding
        self.peak = 0
        self.events: list[tuple[float, int]] = []  # (time, requests outstanding) after each start and end
        self.current = {"answer": 1, "stop": 1}
        self.used: dict[str, set] = {}  # question -> versions its requests ran with
        self.pins = 0

    def pin(self):
        with self.lock:
            self.pins += 1
            return View(self, dict(self.current))

    def call(self, versions, fn, contexts, *args):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.events.append((time.monotonic(), self.now))
            q = self.tok.decode(contexts[0])
            self.used.setdefault(q.split("[assistant]")[0][-40:] if "[assistant]" in q else "stop", set()).add(
                tuple(sorted(versions.items()))
            )
        try:
            time.sleep(self.delay)
            with self.lock:
                return fn(contexts, *args)
        finally:
            with self.lock:
                self.now -= 1
                self.events.append((time.monotonic(), self.now))


class View:
    def __init__(self, backend: ChainBackend, versions):
        self.b, self._versions, self.released = backend, versions, False

    def versions(self):
        return dict(self._versions)

    def generate(self, contexts, adapter, n, temperature, top_p):
        return self.b.call(self._versions, lambda c: ScriptedBackend.generate(self.b, c, adapter, n, temperature, top_p), contexts)

    def next_token_logprobs(self, contexts, adapter, token_ids):
        return self.b.call(self._versions, lambda c: ScriptedBackend.next_token_logprobs(self.b, c, adapter, token_ids), contexts)

    def release(self):
        assert not self.released, "a pin released twice"
        self.released = True
        with self.b.lock:
            self.b.pins -= 1


def make(script, stop_rule, delay=0.0, max_chunks=3):
    tok = CharTokenizer()
    flow = FlowSpec(chunk_tokens=32, max_chunks=max_chunks)
    prompts = PromptBuilder(tok, flow)
    plen = len(prompts.answer_prompt(EX.question))
    backend = ChainBackend(tok, script, stop_rule, lambda ctx: plen, delay=delay)
    return prompts, backend, flow


def collect(examples, seed=0):
    out: dict[str, tuple] = {}
    work = [ChainWork(ex, seed, lambda r, v, ex=ex: out.__setitem__(ex.id, (r, v))) for ex in examples]
    return out, ListSource(work)


def test_chains_give_the_lockstep_engines_rollouts_and_pairs():
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    [want] = rollout_examples([EX], backend, prompts, flow, random.Random(0))
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    out, source = collect([EX])
    assert run_chains(source, backend, prompts, flow, None, in_flight=4) == 1
    got, versions = out[EX.id]
    assert versions == {"answer": 1, "stop": 1} and backend.pins == 0
    lineage = {"run": "r", "shard": 0, "adapterVersions": versions}
    assert mine_pairs(got, prompts, lineage) == mine_pairs(want, prompts, lineage)
    assert [(b.node, b.kind) for b in got.branches] == [(0, "answer"), (1, "stop"), (2, "answer"), (3, "stop")]


def _many(n):
    return [Example(id=f"t-{i:03d}", question=f"Question {i}?", answer="5", source="test") for i in range(n)]


# Every partial answer continues the same way: 3 chunks, a Stop call after the first two (P(yes) = 0.3).
LONG = {"": ["a"], "a": ["b"], "ab": ["c"]}


def test_at_most_in_flight_requests_and_refilled_as_soon_as_one_returns():
    # Each request takes 50 ms: long beside the scheduler's refill latency on a loaded machine (at 10 ms, two
    # training processes beside the test held the mean down to 6.2).
    prompts, backend, flow = make(LONG, lambda t: 0.3, delay=0.05)
    out, source = collect(_many(12))
    run_chains(source, backend, prompts, flow, BaselinesSpec(untrained_flow=True, zero_shot=True), in_flight=8)
    assert len(out) == 12 and backend.pins == 0
    assert backend.peak == 8  # never more than the in-flight count ...
    # ... and refilled as soon as one returns: from the moment the slots are first full until half the
    # requests are done (the tail of the last examples aside), the time-weighted mean is close to 8.
    ev = backend.events
    start = next(i for i, (_, n) in enumerate(ev) if n == 8)
    body = ev[start : len(ev) // 2]
    mean = sum(n * (t1 - t0) for (t0, n), (t1, _) in itertools.pairwise(body)) / (body[-1][0] - body[0][0])
    assert mean > 7.0, mean
    for r, _ in out.values():
        assert r.main.done and r.untrained.done and r.zero_shot.done and all(b.state.done for b in r.branches)


def test_every_request_of_an_example_uses_the_versions_pinned_when_it_started():
    prompts, backend, flow = make(LONG, lambda t: 0.3, delay=0.005)
    examples = _many(10)
    switched = []

    class Switching(ListSource):  # the worker loads a new version while earlier examples still run
        def take(self):
            if len(self._work) == 5:
                backend.current = {"answer": 2, "stop": 1}
                switched.append(True)
            return super().take()

    out: dict = {}
    work = [ChainWork(ex, 0, lambda r, v, ex=ex: out.__setitem__(ex.id, v)) for ex in examples]
    run_chains(Switching(work), backend, prompts, flow, None, in_flight=6)
    assert switched and backend.pins == 0
    assert {k: v["answer"] for k, v in out.items()} == {ex.id: 1 if i < 5 else 2 for i, ex in enumerate(examples)}
    for ex in examples:  # all of an example's Answer requests ran on one version set
        used = [v for q, v in backend.used.items() if q.endswith(ex.question)]
        assert len(used) == 1 and len(used[0]) == 1, (ex.id, used)


def test_decisions_do_not_depend_on_the_order_requests_come_back():
    def run(delay_of):
        prompts, backend, flow = make(LONG, lambda t: 0.5)
        orig = backend.call

        def jitter(versions, fn, contexts, *a):
            time.sleep(delay_of())
            return orig(versions, fn, contexts, *a)

        backend.call = jitter
        out, source = collect(_many(6), seed=3)
        run_chains(source, backend, prompts, flow, None, in_flight=5)
        return {k: (r.main.decisions, [b.state.decisions for b in r.branches]) for k, (r, _) in out.items()}

    rnd = random.Random(1)
    assert run(lambda: 0.0) == run(lambda: rnd.random() * 0.01)


def test_source_with_nothing_now_is_asked_again_and_errors_surface():
    prompts, backend, flow = make(LONG, lambda t: 0.3)

    class Trickle(ChainSource):  # back-pressure: one example now, then nothing twice, then one more
        def __init__(self):
            self.answers = [ChainWork(e, 0, lambda r, v: None) for e in _many(2)]
            self.script = ["w", [], [], "w", None]
            self.idles = 0

        def take(self):
            x = self.script.pop(0)
            return self.answers.pop(0) if x == "w" else x

        def idle(self, seconds):
            self.idles += 1

    src = Trickle()
    assert run_chains(src, backend, prompts, flow, None, in_flight=2, poll_seconds=0.01) == 2
    with pytest.raises(ValueError, match="in_flight must be >= 1"):
        run_chains(ListSource([]), backend, prompts, flow, None, in_flight=0)

    class Broken(ChainBackend):
        def call(self, versions, fn, contexts, *a):
            raise RuntimeError("server gone")

    prompts, broken, flow = make(LONG, lambda t: 0.3)
    broken.__class__ = Broken
    with pytest.raises(RuntimeError, match="server gone"):
        run_chains(collect(_many(3))[1], broken, prompts, flow, None, in_flight=2)
