"""The DPO loss against a hand computation, and sequence log-probs against a direct computation."""

import math

import pytest
import torch

from flowdpo.train.dpo import dpo_loss, sequence_logps


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
    """A causal LM whose next-token logits depend on the current token only (easy to compute by hand)."""

    def __init__(self, vocab=7):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        logits = self.table[input_ids]
        from types import SimpleNamespace

        return SimpleNamespace(logits=logits[:, -logits_to_keep:, :] if logits_to_keep else logits)


def test_sequence_logps_sums_completion_tokens_only_with_left_padding():
    lm = TinyLM()
    prompts = [[1, 2, 3], [4]]
    comps = [[5], [6, 2, 1]]
    got = sequence_logps(lm, prompts, comps, pad_id=0)
    logp = torch.log_softmax(lm.table, dim=-1)
    want0 = logp[3, 5]
    want1 = logp[4, 6] + logp[6, 2] + logp[2, 1]
    assert got.tolist() == pytest.approx([want0.item(), want1.item()], rel=1e-5)
