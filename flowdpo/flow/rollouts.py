"""Rollouts at every node of the main chain, and DPO pair mining (the heart of Flow-DPO).

For each question:
1. run the main chain (this is also the progressive-validation score: the flow answers with the adapters
   it has *before* any pair from this question is trained on);
2. at EVERY node of the main chain take ONE alternative and continue the flow to a final answer:
   - answer node k (node index 2k): a freshly sampled chunk k that differs from the original one;
   - stop node k (node index 2k+1): the opposite Stop decision. A chunk that ended with EOS ended the
     flow without a Stop decision (see `engine.py`), so it has no stop node;
3. where the main chain and the rollout differ in correctness, that node yields a DPO pair for the
   adapter that acted there, chosen = the side that reached the correct answer.

Pairs of the two adapters differ in what is scored:
- answer pairs: chosen/rejected are chunks (token sequences) after the same prompt + partial answer;
  log pi(chunk) is the sum of its tokens' log-probs (`"scoring": "sequence"`);
- stop pairs: chosen/rejected are the two decisions, each a SET of next tokens (yes = {"yes", "Yes"},
  no = {"no", "No"}); log pi(decision) = logsumexp over its set (`"scoring": "token-set"`). This is
  exactly the quantity the Stop decision reads (`engine.stop_probability`), so a DPO step on a pair moves
  the decision itself, not one casing the model hardly uses.

All flows of a batch of questions advance together through `run_flows`: a rollout starts as soon as its
node exists on the main chain (it shares the main chains' batches), and the baselines (untrained flow,
zero-shot single pass) run in the same batched steps.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from flowdpo.data import Example
from flowdpo.flow.backend import GenerationBackend
from flowdpo.flow.engine import END_NO_ALTERNATIVE, FlowState, apply_decision, run_flows
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.grading import grade
from flowdpo.spec import BaselinesSpec, FlowSpec

SCORING_SEQUENCE = "sequence"  # log p(completion) = sum of its tokens' log-probs
SCORING_TOKEN_SET = "token-set"  # log p(completion) = logsumexp of the next-token log-probs of its ids


@dataclass
class Branch:
    node: int  # 2k: answer chunk k; 2k+1: stop decision k
    kind: str  # "answer" | "stop"
    chunk_index: int
    state: FlowState


@dataclass
class ExampleRollouts:
    example: Example
    main: FlowState
    branches: list[Branch] = field(default_factory=list)
    untrained: FlowState | None = None
    zero_shot: FlowState | None = None

    @property
    def flows(self) -> list[FlowState]:
        extra = [s for s in (self.untrained, self.zero_shot) if s is not None]
        return [self.main, *extra, *(b.state for b in self.branches)]

    @property
    def done(self) -> bool:
        return all(s.done for s in self.flows)


def main_state(ex: Example, prompts: PromptBuilder, use_adapters: bool = True, ask_stop: bool = True) -> FlowState:
    return FlowState(
        question=ex.question,
        prompt_ids=prompts.answer_prompt(ex.question),
        use_adapters=use_adapters,
        ask_stop=ask_stop,
    )


def node_count(main: FlowState) -> int:
    """Nodes of the main chain that exist so far: answer node k once chunk k exists, stop node k once
    decision k exists (nodes 0, 1, 2, ... in order)."""
    return len(main.chunks) + len(main.decisions)


def branch_at(main: FlowState, node: int) -> Branch:
    """The one alternative at `node` of the main chain (which must exist)."""
    k, is_stop = divmod(node, 2)
    if not is_stop:
        alt = FlowState(
            question=main.question,
            prompt_ids=main.prompt_ids,
            chunks=[list(c) for c in main.chunks[:k]],
            decisions=list(main.decisions[:k]),
            p_stop=list(main.p_stop[:k]),
            forbid_chunk=list(main.chunks[k]),
        )
        return Branch(node=node, kind="answer", chunk_index=k, state=alt)
    alt = FlowState(
        question=main.question,
        prompt_ids=main.prompt_ids,
        chunks=[list(c) for c in main.chunks[: k + 1]],
        decisions=list(main.decisions[:k]),
        p_stop=list(main.p_stop[:k]),
    )
    apply_decision(alt, not main.decisions[k], main.p_stop[k])
    return Branch(node=node, kind="stop", chunk_index=k, state=alt)


def branches_of(main: FlowState) -> list[Branch]:
    """One alternative per node of a (finished) main chain."""
    return [branch_at(main, n) for n in range(node_count(main))]


def rollout_examples(
    examples: list[Example],
    backend: GenerationBackend,
    prompts: PromptBuilder,
    spec: FlowSpec,
    rng: random.Random,
    baselines: BaselinesSpec | None = None,
    on_done: Callable[[ExampleRollouts], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[ExampleRollouts]:
    """Main chains, every node's rollout and the baselines of a batch of examples, batched across examples.

    `on_done(r)` is called once per example as soon as all of its flows have ended, `on_step()` after
    every batched step (live progress)."""
    results = [ExampleRollouts(ex, main_state(ex, prompts)) for ex in examples]
    for r in results:
        if baselines and baselines.untrained_flow:
            r.untrained = main_state(r.example, prompts, use_adapters=False)
        if baselines and baselines.zero_shot:
            # The single model answering in one pass, with the whole flow's token budget.
            r.zero_shot = main_state(r.example, prompts, use_adapters=False, ask_stop=False)
    spawned = [0] * len(results)
    reported = [False] * len(results)

    def spawn() -> list[FlowState]:
        new: list[FlowState] = []
        for i, r in enumerate(results):
            for node in range(spawned[i], node_count(r.main)):
                b = branch_at(r.main, node)
                r.branches.append(b)
                new.append(b.state)
            spawned[i] = node_count(r.main)
            if on_done is not None and not reported[i] and r.main.done and r.done:
                reported[i] = True
                on_done(r)
        if on_step is not None:
            on_step()
        return [s for s in new if not s.done]

    run_flows([s for r in results for s in r.flows], backend, prompts, spec, rng, spawn)
    return results


def final_text(state: FlowState, prompts: PromptBuilder) -> str:
    return prompts.decode(state.partial_ids(prompts.eos_ids))


def _outcome(state: FlowState, ex: Example, prompts: PromptBuilder) -> dict:
    text = final_text(state, prompts)
    g = grade(text, ex.answer)
    return {"correct": g.correct, "extracted": g.extracted, "chunks": len(state.chunks), "endReason": state.end_reason}


def mine_pairs(r: ExampleRollouts, prompts: PromptBuilder, lineage: dict, max_per_adapter: int | None = None):
    """(result record, pairs) for one example. `lineage` (run, shard, adapterVersions) goes into both."""
    ex, eos = r.example, prompts.eos_ids
    main_text = final_text(r.main, prompts)
    main = _outcome(r.main, ex, prompts)
    pairs: list[dict] = []
    counts = {"answer": 0, "stop": 0}
    rollouts = rollouts_correct = 0
    for b in r.branches:
        if b.state.end_reason == END_NO_ALTERNATIVE:
            continue  # the Answer LLM kept sampling the original chunk: no alternative at this node
        rollouts += 1
        alt = _outcome(b.state, ex, prompts)
        rollouts_correct += alt["correct"]
        if alt["correct"] == main["correct"]:
            continue
        if max_per_adapter is not None and counts[b.kind] >= max_per_adapter:
            continue
        k = b.chunk_index
        main_wins = main["correct"]
        if b.kind == "answer":
            prompt = r.main.prompt_ids + r.main.partial_ids(eos, upto=k)
            main_side, alt_side = r.main.chunks[k], b.state.chunks[k]
        else:
            prompt = prompts.stop_prompt(ex.question, prompts.decode(r.main.partial_ids(eos, upto=k + 1)))
            main_side = prompts.decision_ids(r.main.decisions[k])
            alt_side = prompts.decision_ids(b.state.decisions[k])
        chosen, rejected = (main_side, alt_side) if main_wins else (alt_side, main_side)
        win, lose = ({**main, "branch": "main"}, {**alt, "branch": "rollout"})
        if not main_wins:
            win, lose = lose, win
        counts[b.kind] += 1
        pairs.append(
            {
                "pairId": f"{ex.id}/node-{b.node:02d}",
                **lineage,
                "exampleId": ex.id,
                "node": b.node,
                "kind": b.kind,
                "adapter": b.kind,
                "chunkIndex": k,
                "promptIds": prompt,
                "scoring": SCORING_SEQUENCE if b.kind == "answer" else SCORING_TOKEN_SET,
                "chosenIds": list(chosen),
                "rejectedIds": list(rejected),
                "chosenText": _side_text(b.kind, chosen, prompts),
                "rejectedText": _side_text(b.kind, rejected, prompts),
                "chosen": win,
                "rejected": lose,
            }
        )
    result = {
        **lineage,
        "exampleId": ex.id,
        "source": ex.source,
        "question": ex.question,
        "gold": ex.answer,
        "answer": main_text,
        **main,
        "tokens": r.main.tokens,
        "pStop": [round(p, 4) for p in r.main.p_stop],
        "rollouts": rollouts,
        "rolloutsCorrect": rollouts_correct,
        "pairs": counts,
        "baselines": {},
    }
    # Baselines: correctness (what progress counts) and how each answer ended (the report's budget and
    # truncation figures: a zero-shot answer that ended at max_chunks did not fit the token budget).
    details = {}
    for name, state in (("untrainedFlow", r.untrained), ("zeroShot", r.zero_shot)):
        if state is not None:
            out = _outcome(state, ex, prompts)
            result["baselines"][name] = out["correct"]
            details[name] = {"tokens": state.tokens, "endReason": state.end_reason, "extracted": out["extracted"]}
    if details:
        result["baselineDetails"] = details
    return result, pairs


def _side_text(kind: str, ids: list[int], prompts: PromptBuilder) -> str:
    if kind == "stop":
        return "yes" if list(ids) == prompts.decision_ids(True) else "no"
    return prompts.decode(ids)
