"""The flow: Answer chunks and Stop decisions, advanced for many flows in lockstep.

One flow (the paper's "incremental output production flow"):

    partial = []
    for k in range(max_chunks):
        chunk   = Answer(question, partial)            # <= chunk_tokens tokens, token ids
        partial = partial + chunk                      # token-exact concatenation
        if k == max_chunks - 1 or chunk ended empty: break
        if Stop(question, decode(partial)) == "yes": break
    answer = decode(partial)

`run_flows` advances a list of `FlowState`s together: every step issues ONE batched Answer call for all
flows that need a chunk and ONE batched Stop call for all flows that need a decision. Rollouts branch
off a main chain as new `FlowState`s (see `rollouts.py`) and run through the same loop.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from flowdpo.flow.backend import GenerationBackend
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.spec import FlowSpec


@dataclass
class FlowState:
    question: str
    prompt_ids: list[int]  # the Answer LLM's chat prompt for this question
    chunks: list[list[int]] = field(default_factory=list)  # generated ids per chunk (a final EOS included)
    decisions: list[bool] = field(default_factory=list)  # Stop decision after chunk k (True = stop)
    p_stop: list[float] = field(default_factory=list)  # the Stop LLM's P(yes) at each decision
    use_adapters: bool = True  # False: the untrained flow (base model for both roles)
    forbid_chunk: list[int] | None = None  # the next chunk must differ from this (rollout at an answer node)
    done: bool = False
    end_reason: str = ""

    # -- derived ---------------------------------------------------------------------------------------
    def partial_ids(self, eos_ids: frozenset[int], upto: int | None = None) -> list[int]:
        """Concatenated answer tokens of the first `upto` chunks, without the terminating EOS."""
        ids: list[int] = []
        for chunk in self.chunks[:upto]:
            ids.extend(chunk[:-1] if chunk and chunk[-1] in eos_ids else chunk)
        return ids

    def needs_chunk(self) -> bool:
        return not self.done and len(self.decisions) == len(self.chunks)

    def needs_decision(self) -> bool:
        return not self.done and len(self.chunks) == len(self.decisions) + 1


def _stop_probability(logprobs: list[float], n_yes: int, temperature: float) -> float:
    """P(yes) from the Stop LLM's next-token log-probs over the yes- and no-tokens."""
    yes = math.log(sum(math.exp(x) for x in logprobs[:n_yes]) + 1e-30)
    no = math.log(sum(math.exp(x) for x in logprobs[n_yes:]) + 1e-30)
    return 1.0 / (1.0 + math.exp(-(yes - no) / temperature))


def _after_chunk(state: FlowState, chunk: list[int], spec: FlowSpec, eos_ids: frozenset[int]) -> None:
    state.chunks.append(chunk)
    state.forbid_chunk = None
    empty = not chunk or (len(chunk) == 1 and chunk[0] in eos_ids)
    if len(state.chunks) >= spec.max_chunks:
        state.done, state.end_reason = True, "max_chunks"
    elif empty:
        state.done, state.end_reason = True, "empty_chunk"


def apply_decision(state: FlowState, stop: bool, p_yes: float) -> None:
    state.decisions.append(stop)
    state.p_stop.append(p_yes)
    if stop:
        state.done, state.end_reason = True, "stop"


def run_flows(
    states: list[FlowState],
    backend: GenerationBackend,
    prompts: PromptBuilder,
    spec: FlowSpec,
    rng: random.Random,
) -> None:
    """Advance every state until done, batching all Answer calls and all Stop calls of each step."""
    eos = prompts.eos_ids
    decision_tokens = prompts.yes_ids + prompts.no_ids
    while True:
        # Answer step: one batched call per adapter mode (trained adapters / base model).
        todo = [s for s in states if s.needs_chunk()]
        for use in (True, False):
            group = [s for s in todo if s.use_adapters is use]
            for _attempt in range(spec.resample_attempts):
                if not group:
                    break
                contexts = [s.prompt_ids + s.partial_ids(eos) for s in group]
                chunks = backend.generate(
                    contexts, "answer" if use else None, spec.chunk_tokens, spec.temperature, spec.top_p
                )
                retry = []
                for s, c in zip(group, chunks):
                    if s.forbid_chunk is not None and c == s.forbid_chunk:
                        retry.append(s)  # a rollout must differ from the original node
                    else:
                        _after_chunk(s, c, spec, eos)
                group = retry
            for s in group:  # no different chunk after all attempts: this node has no alternative
                s.done, s.end_reason = True, "no_alternative"
        # Stop step.
        asking = [s for s in states if s.needs_decision()]
        for use in (True, False):
            group = [s for s in asking if s.use_adapters is use]
            if not group:
                continue
            contexts = [prompts.stop_prompt(s.question, prompts.decode(s.partial_ids(eos))) for s in group]
            logps = backend.next_token_logprobs(contexts, "stop" if use else None, decision_tokens)
            for s, lp in zip(group, logps):
                p_yes = _stop_probability(lp, len(prompts.yes_ids), spec.stop_temperature)
                apply_decision(s, rng.random() < p_yes, p_yes)
        if not any(s.needs_chunk() or s.needs_decision() for s in states):
            return
