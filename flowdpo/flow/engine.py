"""The flow: Answer chunks and Stop decisions, advanced for many flows in lockstep.

One flow (the paper's "incremental output production flow"):

    partial = []
    for k in range(max_chunks):
        chunk   = Answer(question, partial)            # <= chunk_tokens tokens, token ids
        partial = partial + chunk                      # token-exact concatenation
        if chunk ends with EOS:      end "eos"         # the Answer LLM finished its answer itself
        if k == max_chunks - 1:      end "max_chunks"  # budget spent: the answer may be cut off
        if Stop(question, partial) == "yes": end "stop"
    answer = decode(partial)

**An EOS ends the flow.** The paper is silent on it; we end the flow when a chunk ends with the
end-of-sequence token, without asking the Stop LLM. Asking it anyway (the earlier behaviour) made the
Answer LLM write past its own end whenever the Stop LLM said "no": on finished, correct answers 9 of 36
forced continuations added text and 6 of those turned the answer wrong, and the untrained Stop LLM says
"no" to most complete answers. Consequences for the nodes (see `rollouts.py`): a chunk that ends with EOS
is an answer node like any other (its rollout samples a different chunk k), but it has NO stop node
after it — there was no decision to flip. The Stop LLM therefore learns only on partial answers the
Answer LLM meant to continue: "is this enough to stop here?".

`run_flows` advances a list of `FlowState`s together: every step issues ONE batched Answer call for all
flows that need a chunk and ONE batched Stop call for all flows that need a decision; each row names its
own adapter (the trained adapters, or the base model for the baselines). `spawn` (called after every step) may add new flows — rollouts start as soon as the node they
branch from exists, so they share the batches of the main chains instead of waiting for them.
A flow with `ask_stop=False` is the single model answering in one pass: it is generated chunk by chunk
(token-exact continuation, the same distribution as one call) until EOS or the same total budget.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from flowdpo.flow.backend import GenerationBackend
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.names import MAIN_CHAIN_ENDS
from flowdpo.spec import FlowSpec

# Why a flow ended (the main chain's reasons are shared names: flowdpo/names.py MAIN_CHAIN_ENDS).
# END_EOS: a chunk ended with the end-of-sequence token, the Answer LLM finished; END_STOP: the Stop LLM said
# yes; END_MAX_CHUNKS: the token budget is spent (the answer may be cut off).
END_EOS, END_STOP, END_MAX_CHUNKS = MAIN_CHAIN_ENDS
END_NO_ALTERNATIVE = "no_alternative"  # a rollout could not sample a chunk different from the original
END_REASONS = (END_EOS, END_STOP, END_MAX_CHUNKS, END_NO_ALTERNATIVE)


@dataclass
class FlowState:
    question: str
    prompt_ids: list[int]  # the Answer LLM's chat prompt for this question
    chunks: list[list[int]] = field(default_factory=list)  # generated ids per chunk (a final EOS included)
    decisions: list[bool] = field(default_factory=list)  # Stop decision after chunk k (True = stop)
    p_stop: list[float] = field(default_factory=list)  # the Stop LLM's P(yes) at each decision
    use_adapters: bool = True  # False: the base model for both roles (untrained flow, zero-shot)
    ask_stop: bool = True  # False: no Stop LLM - one pass until EOS or the budget (zero-shot baseline)
    forbid_chunk: list[int] | None = None  # the next chunk must differ from this (rollout at an answer node)
    done: bool = False
    end_reason: str = ""

    # -- derived ---------------------------------------------------------------------------------------
    def partial_ids(self, eos_ids: frozenset[int], upto: int | None = None) -> list[int]:
        """Concatenated answer tokens of the first `upto` chunks, without a terminating EOS."""
        ids: list[int] = []
        for chunk in self.chunks[:upto]:
            ids.extend(chunk[:-1] if chunk and chunk[-1] in eos_ids else chunk)
        return ids

    def needs_chunk(self) -> bool:
        return not self.done and (not self.ask_stop or len(self.decisions) == len(self.chunks))

    def needs_decision(self) -> bool:
        return not self.done and self.ask_stop and len(self.chunks) == len(self.decisions) + 1

    @property
    def tokens(self) -> int:
        return sum(len(c) for c in self.chunks)


def stop_probability(logprobs: list[float], n_yes: int, temperature: float) -> float:
    """P(yes) of the Stop decision from the next-token log-probs of the yes-tokens (first `n_yes`) and the
    no-tokens: sigmoid((logsumexp(yes) - logsumexp(no)) / temperature). The Stop adapter's DPO pairs train
    exactly this log-odds (`flowdpo.train.dpo.token_set_logps`)."""
    yes = _logsumexp(logprobs[:n_yes])
    no = _logsumexp(logprobs[n_yes:])
    z = (yes - no) / temperature
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))


def after_chunk(state: FlowState, chunk: list[int], spec: FlowSpec, eos_ids: frozenset[int]) -> None:
    state.chunks.append(chunk)
    state.forbid_chunk = None
    if not chunk or chunk[-1] in eos_ids:
        state.done, state.end_reason = True, END_EOS
    elif len(state.chunks) >= spec.max_chunks:
        state.done, state.end_reason = True, END_MAX_CHUNKS


def apply_decision(state: FlowState, stop: bool, p_yes: float) -> None:
    state.decisions.append(stop)
    state.p_stop.append(p_yes)
    if stop:
        state.done, state.end_reason = True, END_STOP


def run_flows(
    states: list[FlowState],
    backend: GenerationBackend,
    prompts: PromptBuilder,
    spec: FlowSpec,
    rng: random.Random,
    spawn: Callable[[], list[FlowState]] | None = None,
) -> None:
    """Advance every state until done, batching all Answer calls and all Stop calls of each step.

    `spawn()` is called after every step and returns flows to add (rollouts whose node now exists)."""
    eos = prompts.eos_ids
    decision_tokens = prompts.yes_ids + prompts.no_ids
    live = [s for s in states if not s.done]
    if spawn is not None:
        live += spawn()
    while live:
        # Answer step: one batched call for every flow that needs a chunk, each row under its own adapter
        # (trained Answer adapter, or the base model for the baselines).
        group = [s for s in live if s.needs_chunk()]
        for _attempt in range(spec.resample_attempts):
            if not group:
                break
            contexts = [s.prompt_ids + s.partial_ids(eos) for s in group]
            adapters = ["answer" if s.use_adapters else None for s in group]
            chunks = backend.generate(contexts, adapters, spec.chunk_tokens, spec.temperature, spec.top_p)
            retry = []
            for s, c in zip(group, chunks):
                if s.forbid_chunk is not None and c == s.forbid_chunk:
                    retry.append(s)  # a rollout must differ from the original node
                else:
                    after_chunk(s, c, spec, eos)
            group = retry
        for s in group:  # no different chunk after all attempts: this node has no alternative
            s.done, s.end_reason = True, END_NO_ALTERNATIVE
        # Stop step: one batched call for every flow that needs a decision.
        asking = [s for s in live if s.needs_decision()]
        if asking:
            contexts = [prompts.stop_prompt(s.question, prompts.decode(s.partial_ids(eos))) for s in asking]
            adapters = ["stop" if s.use_adapters else None for s in asking]
            logps = backend.next_token_logprobs(contexts, adapters, decision_tokens)
            for s, lp in zip(asking, logps):
                p_yes = stop_probability(lp, len(prompts.yes_ids), spec.stop_temperature)
                apply_decision(s, rng.random() < p_yes, p_yes)
        if spawn is not None:
            live += spawn()
        live = [s for s in live if not s.done]
