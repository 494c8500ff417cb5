"""The flow as independent asynchronous request chains (the vLLM worker's engine).

`run_flows` (engine.py) advances a batch of flows in lockstep: every step waits for its slowest chunk, so a
server sees a few dozen sequences at once. Here every flow of an example (its main chain, the rollout at
each node and the baselines) is a chain of requests of its own: a chunk request, then its Stop request,
then the next chunk. Up to `in_flight` requests are outstanding at any moment, and the moment one returns
its flow's next request (or the next flow that is ready, or a new example from `source`) takes the slot,
so the server keeps about `in_flight` sequences running until the source runs dry.

The same rules as the lockstep engine (`engine.after_chunk`, `apply_decision`, `rollouts.branch_at`):
- a rollout starts as soon as its node exists on the main chain;
- an answer-node rollout resamples until its chunk differs from the original (`resampleAttempts`);
- the baselines (untrained flow, zero-shot pass) are flows of the same example, interleaved with the rest.

Versions: every flow of an example runs on the adapter versions current when the example was admitted
(`backend.pin()`, held until its last flow ends); the example's lineage records them.

Determinism: the Stop decision of each flow is sampled from that flow's own generator, seeded by
(`seed`, example id, flow), so which decision a flow takes never depends on the order in which requests
come back. Sampling of chunks is the server's.

Ordering: flows of earlier examples take free slots first, so examples finish roughly in admission order
and their results can be written as soon as a shard's last example is done.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from flowdpo.data import Example
from flowdpo.flow.engine import END_NO_ALTERNATIVE, FlowState, after_chunk, apply_decision, stop_probability
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import ExampleRollouts, branch_at, main_state, node_count
from flowdpo.spec import BaselinesSpec, FlowSpec


@dataclass
class ChainWork:
    """One example for `run_chains`; `done(rollouts, versions)` is called once all of its flows ended."""

    example: Example
    seed: int
    done: Callable[[ExampleRollouts, dict[str, int]], None]


class ChainSource:
    """Where `run_chains` gets examples. `take()`: the next example ([] when none is ready now, e.g. the
    worker's back-pressure; None when there will be no more). `idle(seconds)`: nothing is running and
    `take()` gave []: wait a little before asking again."""

    def take(self) -> ChainWork | None | list:
        raise NotImplementedError

    def idle(self, seconds: float) -> None:
        time.sleep(seconds)


class ListSource(ChainSource):
    """A fixed list of examples."""

    def __init__(self, work: list[ChainWork]):
        self._work = list(reversed(work))

    def take(self) -> ChainWork | None:
        return self._work.pop() if self._work else None


@dataclass
class _Example:
    seq: int
    work: ChainWork
    rollouts: ExampleRollouts
    view: object  # the pinned backend view (PinnedVersions)
    versions: dict[str, int]
    spawned: int = 0  # nodes of the main chain whose rollout exists
    flows: int = 0  # flows created
    open: int = 0  # flows not ended yet


@dataclass
class _Flow:
    ex: _Example
    order: int
    state: FlowState
    rng: random.Random
    tries: int = 0  # samples at the current answer node that equalled the forbidden chunk


def run_chains(
    source: ChainSource,
    backend,
    prompts: PromptBuilder,
    spec: FlowSpec,
    baselines: BaselinesSpec | None,
    in_flight: int,
    *,
    poll_seconds: float = 0.5,
    on_step: Callable[[], None] | None = None,
) -> int:
    """Run every example `source` hands out; returns how many. `backend` must offer `pin()` (the vLLM
    backend): each example's requests go through its pinned view. `on_step()` after every answered request."""
    if in_flight < 1:
        raise ValueError(f"in_flight must be >= 1 (got {in_flight})")
    eos = prompts.eos_ids
    decision_tokens = prompts.yes_ids + prompts.no_ids
    ready: list[tuple] = []  # heap of (example seq, flow order, tiebreak, flow)
    tiebreak = itertools.count()
    running: dict[Future, _Flow] = {}
    seqs = itertools.count()
    admitted = 0
    exhausted = False

    def push(flow: _Flow) -> None:
        heapq.heappush(ready, (flow.ex.seq, flow.order, next(tiebreak), flow))

    def add_flow(ex: _Example, state: FlowState, name: str) -> None:
        if state.done:
            return
        ex.open += 1
        ex.flows += 1
        rng = random.Random(f"{ex.work.seed}:{ex.work.example.id}:{name}")
        push(_Flow(ex, ex.flows, state, rng))

    def admit(work: ChainWork) -> None:
        view = backend.pin()
        r = ExampleRollouts(work.example, main_state(work.example, prompts))
        if baselines and baselines.untrained_flow:
            r.untrained = main_state(work.example, prompts, use_adapters=False)
        if baselines and baselines.zero_shot:
            r.zero_shot = main_state(work.example, prompts, use_adapters=False, ask_stop=False)
        ex = _Example(next(seqs), work, r, view, view.versions())
        add_flow(ex, r.main, "main")
        if r.untrained is not None:
            add_flow(ex, r.untrained, "untrained")
        if r.zero_shot is not None:
            add_flow(ex, r.zero_shot, "zero-shot")

    def request(flow: _Flow):
        s, view = flow.state, flow.ex.view
        if s.needs_chunk():
            ctx = s.prompt_ids + s.partial_ids(eos)
            adapter = "answer" if s.use_adapters else None
            return view.generate([ctx], adapter, spec.chunk_tokens, spec.temperature, spec.top_p)[0]
        ctx = prompts.stop_prompt(s.question, prompts.decode(s.partial_ids(eos)))
        return view.next_token_logprobs([ctx], "stop" if s.use_adapters else None, decision_tokens)[0]

    def answered(flow: _Flow, out) -> None:
        s, ex = flow.state, flow.ex
        if s.needs_chunk():
            if s.forbid_chunk is not None and out == s.forbid_chunk:
                flow.tries += 1  # a rollout must differ from the original node
                if flow.tries >= spec.resample_attempts:
                    s.done, s.end_reason = True, END_NO_ALTERNATIVE
            else:
                after_chunk(s, out, spec, eos)
        else:
            p_yes = stop_probability(out, len(prompts.yes_ids), spec.stop_temperature)
            apply_decision(s, flow.rng.random() < p_yes, p_yes)
        r = ex.rollouts
        if s is r.main:  # new nodes on the main chain: their rollouts start now
            for node in range(ex.spawned, node_count(r.main)):
                b = branch_at(r.main, node)
                r.branches.append(b)
                ex.spawned += 1
                add_flow(ex, b.state, f"node-{node}")
        if not s.done:
            push(flow)
            return
        ex.open -= 1
        if ex.open == 0 and r.main.done:
            ex.view.release()
            ex.work.done(r, ex.versions)

    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="chain")
    failed = True
    try:
        while True:
            while len(running) < in_flight:
                if ready:
                    flow = heapq.heappop(ready)[-1]
                    running[pool.submit(request, flow)] = flow
                    continue
                if exhausted:
                    break
                work = source.take()
                if work is None:
                    exhausted = True
                    break
                if isinstance(work, list):  # nothing to hand out right now
                    break
                admit(work)
                admitted += 1
            if not running:
                if exhausted and not ready:
                    failed = False
                    return admitted
                source.idle(poll_seconds)
                continue
            finished, _ = wait(list(running), timeout=poll_seconds, return_when=FIRST_COMPLETED)
            for fut in finished:
                flow = running.pop(fut)
                answered(flow, fut.result())
                if on_step is not None:
                    on_step()
    finally:
        # On an error (or SIGTERM) do not wait for the requests still out: the caller releases its claims now.
        pool.shutdown(wait=not failed, cancel_futures=True)
