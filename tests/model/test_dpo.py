"""The DPO loss against a hand computation, and sequence log-probs against a direct computation."""

import math
from types import SimpleNamespace

import pytest
import torch

from flowdpo.train.dpo import dpo_loss, pair_logps, sequence_logps, token_set_logps


def test_dpo_loss_matches_hand_computation():
    pc, pr = torch.tensor([-4.0, -10.0]), torch.tensor([-6.0, -9.0])
    rc, rr = torch.tensor([-5.0, -10.0]), torch.tensor([-5.0, -10.0])
    beta = 0.5
    # Row 0: (pc-pr)-(rc-rr) = 2 - 0 = 2      -> -log sigmoid(1.0)
    # Row 1: (-10+9)-(-10+10) = -1            -> -log sigmoid(-0.5)
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(0.5)))) / 2
    out = dpo_loss(pc, pr, rc, rr, beta)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5])
    assert out.margin == pytest.approx(((0.5 + 0.5) + (0.0 - 0.5)) / 2)
    assert out.accuracy == pytest.approx(0.5)


def test_dpo_loss_is_log2_when_policy_equals_reference():
    x = torch.tensor([-3.0, -7.0])
    out = dpo_loss(x, x - 1, x, x - 1, beta=1.0)
    assert out.loss.item() == pytest.approx(math.log(2))


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=1.0).loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descending the loss raises log pi(chosen)


class TinyLM(torch.nn.Module):
    """A causal LM whose next-token logits depend on the current token only (easy to compute by hand):
    the hidden state is the token's one-hot vector and the LM head is a table."""

    def __init__(self, vocab=7):
        super().__init__()
        torch.manual_seed(0)
        self.vocab = vocab
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))
        self.device = torch.device("cpu")
        self.config = SimpleNamespace()
        self.model = lambda input_ids, **kw: SimpleNamespace(
            last_hidden_state=torch.nn.functional.one_hot(input_ids, self.vocab).float()
        )

    def lm_head(self, hidden):
        assert hidden.is_contiguous(), "the LM head must get a contiguous hidden state"
        return hidden @ self.table


def test_sequence_logps_sums_completion_tokens_only_with_left_padding():
    lm = TinyLM()
    prompts = [[1, 2, 3], [4]]
    comps = [[5], [6, 2, 1]]
    got = sequence_logps(lm, prompts, comps, pad_id=0)
    logp = torch.log_softmax(lm.table, dim=-1)
    want0 = logp[3, 5]
    want1 = logp[4, 6] + logp[6, 2] + logp[2, 1]
    assert got.tolist() == pytest.approx([want0.item(), want1.item()], rel=1e-5)


def test_token_set_logps_is_logsumexp_over_the_set_at_the_next_position():
    lm = TinyLM()
    got = token_set_logps(lm, [[1, 2, 3], [4]], [[5, 6], [2]], pad_id=0)
    logp = torch.log_softmax(lm.table, dim=-1)
    want = [torch.logsumexp(logp[3, [5, 6]], 0).item(), logp[4, 2].item()]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_pair_logps_scores_stop_pairs_as_token_sets_and_chunks_as_sequences():
    lm = TinyLM()
    logp = torch.log_softmax(lm.table, dim=-1)
    stop = [{"promptIds": [1, 3], "chosenIds": [5, 6], "rejectedIds": [2, 4], "scoring": "token-set"}]
    c, r = pair_logps(lm, stop, pad_id=0)
    assert c.item() == pytest.approx(torch.logsumexp(logp[3, [5, 6]], 0).item(), rel=1e-5)
    assert r.item() == pytest.approx(torch.logsumexp(logp[3, [2, 4]], 0).item(), rel=1e-5)
    chunk = [{"promptIds": [1, 3], "chosenIds": [5, 6], "rejectedIds": [2], "scoring": "sequence"}]
    c, r = pair_logps(lm, chunk, pad_id=0)
    assert c.item() == pytest.approx((logp[3, 5] + logp[5, 6]).item(), rel=1e-5)
    assert r.item() == pytest.approx(logp[3, 2].item(), rel=1e-5)
    with pytest.raises(ValueError, match="mixes scorings"):
        pair_logps(lm, stop + chunk, pad_id=0)


@pytest.mark.slow
def test_a_dpo_step_on_a_yes_pair_raises_the_stop_decisions_p_yes():
    """The Stop objective is the Stop decision: one DPO step on a (yes > no) pair raises P(yes) as the flow
    reads it (both casings, `stop_probability`), on the prompt trained and on an unseen one."""
    from flowdpo.flow.backend import TransformersBackend
    from flowdpo.flow.engine import stop_probability
    from flowdpo.flow.prompts import PromptBuilder
    from flowdpo.models import load_base_model
    from flowdpo.spec import FlowSpec, LoraSpec, ModelSpec
    from flowdpo.train.adapters import activate_for_training, adapter_parameters, attach_adapters

    model, tok = load_base_model(ModelSpec())
    model = attach_adapters(model, LoraSpec(), seed=0)
    prompts = PromptBuilder(tok, FlowSpec())
    backend = TransformersBackend(model, tok, prompts.eos_ids)
    trained = prompts.stop_prompt("What is 7 + 6?", "7 + 6 = 13. The answer is 13.")
    unseen = prompts.stop_prompt("What is 9 * 3?", "9 * 3 = 27. So the answer is 27.")
    decision = prompts.yes_ids + prompts.no_ids

    def p_yes(version):
        backend.set_versions({"stop": version})
        lps = backend.next_token_logprobs([trained, unseen], "stop", decision)
        return [stop_probability(lp, len(prompts.yes_ids), 1.0) for lp in lps]

    before = p_yes(0)
    pair = {"promptIds": trained, "chosenIds": prompts.decision_ids(True), "rejectedIds": prompts.decision_ids(False),
            "scoring": "token-set"}
    activate_for_training(model, "stop")
    model.train()
    opt = torch.optim.AdamW(adapter_parameters(model, "stop"), lr=1e-3)
    with torch.no_grad(), model.disable_adapter():
        ref = pair_logps(model, [pair], tok.pad_token_id)
    pol = pair_logps(model, [pair], tok.pad_token_id)
    dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=0.5).loss.backward()
    opt.step()
    model.eval()
    after = p_yes(1)
    assert after[0] > before[0] + 0.05, (before, after)
    assert after[1] > before[1], (before, after)


def test_control_swaps_about_half_of_the_pairs_the_same_way_every_time():
    from flowdpo.train.online import coin, swapped

    ids = [f"t-{i:06d}/node-{n:02d}" for i in range(500) for n in range(3)]
    flips = [coin(7, i) for i in ids]
    assert 0.45 < sum(flips) / len(flips) < 0.55
    assert flips == [coin(7, i) for i in ids] and flips != [coin(8, i) for i in ids]
    p = {"pairId": "x", "chosenIds": [1, 2], "rejectedIds": [3], "chosenText": "a", "rejectedText": "b"}
    s = swapped(p)
    assert (s["chosenIds"], s["rejectedIds"], s["chosenText"], s["rejectedText"]) == ([3], [1, 2], "b", "a")
    assert swapped(s) == p
