"""Rollouts at every node of the main chain, and DPO pair mining (the heart of Flow-DPO).

For each question:
1. run the main chain (this is also the progressive-validation score: the flow answers with the adapters
   it has *before* any pair from this question is trained on);
2. at EVERY node of the main chain take ONE alternative and continue the flow to a final answer:
   - answer node k (node index 2k): a freshly sampled chunk k that differs from the original one;
   - stop node k (node index 2k+1): the opposite Stop decision;
3. where the main chain and the rollout differ in correctness, that node yields a DPO pair for the
   adapter that acted there, chosen = the side that reached the correct answer.

All rollouts of a batch of questions advance together through `run_flows` (one batched Answer call and
one batched Stop call per step): they share prefixes, so running them one by one would waste the batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from flowdpo.data import Example
from flowdpo.flow.backend import GenerationBackend
from flowdpo.flow.engine import FlowState, apply_decision, run_flows
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.grading import grade
from flowdpo.spec import BaselinesSpec, FlowSpec


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
    zero_shot_ids: list[int] | None = None


def main_state(ex: Example, prompts: PromptBuilder, use_adapters: bool = True) -> FlowState:
    return FlowState(question=ex.question, prompt_ids=prompts.answer_prompt(ex.question), use_adapters=use_adapters)


def branches_of(main: FlowState) -> list[Branch]:
    """One alternative per node of a finished main chain."""
    out: list[Branch] = []
    for k, chunk in enumerate(main.chunks):
        alt = FlowState(
            question=main.question,
            prompt_ids=main.prompt_ids,
            chunks=[list(c) for c in main.chunks[:k]],
            decisions=list(main.decisions[:k]),
            p_stop=list(main.p_stop[:k]),
            forbid_chunk=list(chunk),
        )
        out.append(Branch(node=2 * k, kind="answer", chunk_index=k, state=alt))
        if k < len(main.decisions):
            alt = FlowState(
                question=main.question,
                prompt_ids=main.prompt_ids,
                chunks=[list(c) for c in main.chunks[: k + 1]],
                decisions=list(main.decisions[:k]),
                p_stop=list(main.p_stop[:k]),
            )
            apply_decision(alt, not main.decisions[k], main.p_stop[k])
            out.append(Branch(node=2 * k + 1, kind="stop", chunk_index=k, state=alt))
    return out


def rollout_examples(
    examples: list[Example],
    backend: GenerationBackend,
    prompts: PromptBuilder,
    spec: FlowSpec,
    rng: random.Random,
    baselines: BaselinesSpec | None = None,
) -> list[ExampleRollouts]:
    """Main chains, then every node's rollout, for a batch of examples (batched across examples)."""
    mains = [main_state(ex, prompts) for ex in examples]
    extra: list[FlowState] = []
    untrained: list[FlowState | None] = [None] * len(examples)
    if baselines and baselines.untrained_flow:
        untrained = [main_state(ex, prompts, use_adapters=False) for ex in examples]
        extra = [s for s in untrained if s is not None]
    run_flows(mains + extra, backend, prompts, spec, rng)
    results = [ExampleRollouts(ex, m, branches_of(m), u) for ex, m, u in zip(examples, mains, untrained)]
    run_flows([b.state for r in results for b in r.branches], backend, prompts, spec, rng)
    if baselines and baselines.zero_shot:
        # The single model answering in one pass, with the whole flow's token budget.
        outs = backend.generate(
            [m.prompt_ids for m in mains], None, spec.chunk_tokens * spec.max_chunks, spec.temperature, spec.top_p
        )
        for r, ids in zip(results, outs):
            r.zero_shot_ids = ids
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
        if b.state.end_reason == "no_alternative":
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
            main_side = [prompts.yes_id if r.main.decisions[k] else prompts.no_id]
            alt_side = [prompts.yes_id if b.state.decisions[k] else prompts.no_id]
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
                "chosenIds": list(chosen),
                "rejectedIds": list(rejected),
                "chosenText": prompts.decode(chosen),
                "rejectedText": prompts.decode(rejected),
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
        "tokens": sum(len(c) for c in r.main.chunks),
        "pStop": [round(p, 4) for p in r.main.p_stop],
        "rollouts": rollouts,
        "rolloutsCorrect": rollouts_correct,
        "pairs": counts,
        "baselines": {},
    }
    if r.untrained is not None:
        result["baselines"]["untrainedFlow"] = _outcome(r.untrained, ex, prompts)["correct"]
    if r.zero_shot_ids is not None:
        zs = prompts.decode([t for t in r.zero_shot_ids if t not in eos])
        result["baselines"]["zeroShot"] = grade(zs, ex.answer).correct
    return result, pairs
