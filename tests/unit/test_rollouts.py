"""Pair mining on a scripted backend: which nodes yield pairs, with what chosen/rejected and lineage."""

import random

import pytest

from flowdpo.data import Example
from flowdpo.flow.engine import FlowState, run_flows
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import branches_of, mine_pairs, rollout_examples
from flowdpo.spec import BaselinesSpec, FlowSpec
from tests.support.scripted import CharTokenizer, ScriptedBackend

EX = Example(id="t-000001", question="What is 2 + 3?", answer="5", source="test")


def make(script, stop_rule, max_chunks=3):
    tok = CharTokenizer()
    flow = FlowSpec(chunk_tokens=32, max_chunks=max_chunks)
    prompts = PromptBuilder(tok, flow)
    plen = len(prompts.answer_prompt(EX.question))
    backend = ScriptedBackend(tok, script, stop_rule, lambda ctx: plen)
    return prompts, backend, flow


# The Stop LLM says yes exactly when the partial answer ends with a period.
ENDS_WITH_PERIOD = lambda text: 1.0 if text.rstrip().endswith(".") else 0.0

SCRIPT = {
    "": ["2 + 3", "2 + 4"],  # chunk 0: original, then the rollout's alternative
    "2 + 3": [" = 5.", " = 7."],  # chunk 1 after the original chunk 0
    "2 + 4": [" = 6."],  # chunk 1 after the alternative chunk 0
    "2 + 3 = 5.": [" Done."],  # chunk 2 when the Stop decision is flipped to "continue"
}


def test_main_chain_is_token_exact_and_stops_on_yes():
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    s = FlowState(question=EX.question, prompt_ids=prompts.answer_prompt(EX.question))
    run_flows([s], backend, prompts, flow, random.Random(0))
    assert s.decisions == [False, True] and s.end_reason == "stop"
    assert prompts.decode(s.partial_ids(prompts.eos_ids)) == "2 + 3 = 5."
    assert s.partial_ids(prompts.eos_ids) == [t for c in s.chunks for t in c]


def test_one_rollout_per_node_and_pairs_where_correctness_differs():
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    [r] = rollout_examples([EX], backend, prompts, flow, random.Random(0))
    assert [(b.node, b.kind) for b in r.branches] == [(0, "answer"), (1, "stop"), (2, "answer"), (3, "stop")]
    lineage = {"run": "r", "shard": 4, "adapterVersions": backend.versions()}
    result, pairs = mine_pairs(r, prompts, lineage)

    assert result["correct"] is True and result["answer"] == "2 + 3 = 5."
    assert result["rollouts"] == 4 and result["rolloutsCorrect"] == 1  # only "... Done." is still 5
    assert [(p["node"], p["adapter"]) for p in pairs] == [(0, "answer"), (1, "stop"), (2, "answer")]
    a0, s0, a1 = pairs
    assert (a0["chosenText"], a0["rejectedText"]) == ("2 + 3", "2 + 4")
    assert a0["promptIds"] == prompts.answer_prompt(EX.question)  # node 0: nothing written yet
    # Stop node 0: continuing ("no") led to 5, stopping at "2 + 3" gave no final answer.
    # Stop pairs score the decision's token sets (both casings), exactly what P(yes) reads.
    assert (s0["chosenIds"], s0["rejectedIds"]) == (prompts.decision_ids(False), prompts.decision_ids(True))
    assert (s0["chosenText"], s0["rejectedText"]) == ("no", "yes") and s0["scoring"] == "token-set"
    assert a0["scoring"] == "sequence"
    assert "Candidate solution: 2 + 3\n" in prompts.decode(s0["promptIds"])
    assert (a1["chosenText"], a1["rejectedText"]) == (" = 5.", " = 7.")
    assert prompts.decode(a1["promptIds"]).endswith("[assistant]2 + 3")
    for p in pairs:
        assert p["exampleId"] == EX.id and p["run"] == "r" and p["shard"] == 4
        assert p["adapterVersions"] == {"answer": 7, "stop": 3}
        assert p["chosen"]["correct"] is True and p["rejected"]["correct"] is False
        assert {p["chosen"]["branch"], p["rejected"]["branch"]} == {"main", "rollout"}
        assert p["pairId"] == f"{EX.id}/node-{p['node']:02d}"
    assert result["pairs"] == {"answer": 2, "stop": 1}


def test_rollouts_of_a_batch_share_one_generate_call_per_step():
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    examples = [Example(id=f"t-{i}", question=EX.question, answer="5", source="test") for i in range(3)]
    rollout_examples(examples, backend, prompts, flow, random.Random(0))
    # Step 1: the 3 main chains. Step 2: the main chains' second chunks AND the rollouts of node 0 (a
    # different first chunk), which start as soon as that node exists instead of after the main chains.
    assert backend.generate_calls[0] == 3
    assert backend.generate_calls[1] == 3 + 3


def test_wrong_main_chain_makes_the_rollout_the_chosen_side():
    script = {"": ["2 + 4", "2 + 3"], "2 + 4": [" = 6."], "2 + 3": [" = 5."], "2 + 4 = 6.": ["<eos>"]}
    prompts, backend, flow = make(script, ENDS_WITH_PERIOD)
    [r] = rollout_examples([EX], backend, prompts, flow, random.Random(0))
    result, pairs = mine_pairs(r, prompts, {"run": "r", "shard": 0, "adapterVersions": {}})
    assert result["correct"] is False
    node0 = next(p for p in pairs if p["node"] == 0)
    assert (node0["chosenText"], node0["rejectedText"]) == ("2 + 3", "2 + 4")
    assert node0["chosen"]["branch"] == "rollout"


def test_rollout_chunk_must_differ_and_a_node_without_alternative_yields_nothing():
    script = {"": ["2 + 3 = 5."]}  # the Answer LLM always writes the same thing
    prompts, backend, flow = make(script, ENDS_WITH_PERIOD)
    [r] = rollout_examples([EX], backend, prompts, flow, random.Random(0))
    assert r.branches[0].state.end_reason == "no_alternative"
    assert backend.calls[""] == 1 + flow.resample_attempts
    result, pairs = mine_pairs(r, prompts, {"run": "r", "shard": 0, "adapterVersions": {}})
    # Answer node 0 has no alternative; stop node 1 ("continue" instead of "stop") gets an EOS chunk and
    # ends with the same, correct, answer: one rollout, no pair.
    assert result["rollouts"] == 1 and result["rolloutsCorrect"] == 1 and pairs == []


def test_max_chunks_ends_the_flow_without_a_last_stop_decision():
    script = {"": ["1"], "1": ["1"], "11": ["1"]}
    prompts, backend, flow = make(script, lambda t: 0.0, max_chunks=3)
    s = FlowState(question=EX.question, prompt_ids=prompts.answer_prompt(EX.question))
    run_flows([s], backend, prompts, flow, random.Random(0))
    assert len(s.chunks) == 3 and len(s.decisions) == 2 and s.end_reason == "max_chunks"
    assert len(branches_of(s)) == 3 + 2


def test_pairs_cap_per_adapter():
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    [r] = rollout_examples([EX], backend, prompts, flow, random.Random(0))
    _, pairs = mine_pairs(r, prompts, {"run": "r", "shard": 0, "adapterVersions": {}}, max_per_adapter=1)
    assert [p["adapter"] for p in pairs] == ["answer", "stop"]


@pytest.mark.parametrize("which", ["untrained_flow", "zero_shot"])
def test_baselines_use_the_base_model(which):
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    baselines = BaselinesSpec(**{which: True})
    [r] = rollout_examples([EX], backend, prompts, flow, random.Random(0), baselines)
    result, _ = mine_pairs(r, prompts, {"run": "r", "shard": 0, "adapterVersions": {}})
    key = {"untrained_flow": "untrainedFlow", "zero_shot": "zeroShot"}[which]
    assert key in result["baselines"] and None in backend.adapters_seen


def test_an_eos_chunk_ends_the_flow_without_asking_the_stop_llm():
    # The Stop LLM would always say "continue"; the Answer LLM ends its answer itself.
    script = {"": ["2 + 3 = 5.<eos>", "2 + 3 = 6.<eos>"], "2 + 3 = 5.": ["Wait, 6.<eos>"]}
    prompts, backend, flow = make(script, lambda t: 0.0)
    s = FlowState(question=EX.question, prompt_ids=prompts.answer_prompt(EX.question))
    run_flows([s], backend, prompts, flow, random.Random(0))
    assert s.end_reason == "eos" and s.decisions == [] and backend.stop_calls == []
    assert prompts.decode(s.partial_ids(prompts.eos_ids)) == "2 + 3 = 5."  # the EOS is not part of the text
    # Its nodes: answer node 0 only; there is no stop node after a chunk that ended with EOS.
    [r] = rollout_examples([EX], make(script, lambda t: 0.0)[1], prompts, flow, random.Random(0))
    assert [(b.node, b.kind) for b in r.branches] == [(0, "answer")]
    _, pairs = mine_pairs(r, prompts, {"run": "r", "shard": 0, "adapterVersions": {}})
    assert [(p["node"], p["chosenText"], p["rejectedText"]) for p in pairs] == [(0, "2 + 3 = 5.", "2 + 3 = 6.")]
    assert pairs[0]["chosenIds"][-1] in prompts.eos_ids  # the chunk trains its own end


def test_eos_mid_chain_ends_after_earlier_stop_decisions():
    script = {"": ["2 + 3"], "2 + 3": [" = 5.<eos>"]}
    prompts, backend, flow = make(script, lambda t: 0.0)
    s = FlowState(question=EX.question, prompt_ids=prompts.answer_prompt(EX.question))
    run_flows([s], backend, prompts, flow, random.Random(0))
    assert s.end_reason == "eos" and s.decisions == [False] and len(s.chunks) == 2
    assert backend.stop_calls == [1]  # asked once, after the first chunk only
    assert [(b.node, b.kind) for b in branches_of(s)] == [(0, "answer"), (1, "stop"), (2, "answer")]


def test_zero_shot_baseline_is_one_pass_with_the_flow_budget_and_no_stop_llm():
    # Without a Stop LLM the answer continues chunk after chunk until EOS or chunkTokens x maxChunks.
    script = {"": ["12"], "12": ["34"], "1234": ["56"], "123456": ["78<eos>"]}
    prompts, backend, flow = make(script, lambda t: 1.0, max_chunks=3)
    r = rollout_examples([EX], backend, prompts, flow, random.Random(0), BaselinesSpec(zero_shot=True))[0]
    zs = r.zero_shot
    assert zs.decisions == [] and zs.end_reason == "max_chunks"
    assert prompts.decode(zs.partial_ids(prompts.eos_ids)) == "123456"
    result, _ = mine_pairs(r, prompts, {"run": "r", "shard": 0, "adapterVersions": {}})
    assert result["baselineDetails"]["zeroShot"] == {"tokens": 6, "endReason": "max_chunks", "extracted": "123456"}


def test_on_done_reports_each_example_once_when_all_its_flows_ended():
    prompts, backend, flow = make(SCRIPT, ENDS_WITH_PERIOD)
    examples = [Example(id=f"t-{i}", question=EX.question, answer="5", source="test") for i in range(3)]
    seen = []
    rs = rollout_examples(examples, backend, prompts, flow, random.Random(0), BaselinesSpec(zero_shot=True),
                          on_done=lambda r: seen.append((r.example.id, r.done)))
    assert sorted(seen) == [(ex.id, True) for ex in examples]
    assert all(r.done for r in rs)
