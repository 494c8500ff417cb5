"""The DPO loss and sequence log-probabilities, small and explicit (trl's DPOTrainer is dataset-bound
and does not fit an online rollout/train loop; we reuse trl's `selective_log_softmax`).

    loss = -log sigmoid( beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))] )

The reference model is the base with the adapters disabled (`model.disable_adapter()`), so no second copy
of the weights is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from trl.trainer.utils import selective_log_softmax


@dataclass
class DPOOutput:
    loss: torch.Tensor  # mean over the batch, differentiable
    chosen_rewards: torch.Tensor  # beta * (log pi(c) - log ref(c)), detached
    rejected_rewards: torch.Tensor

    @property
    def margin(self) -> float:
        return float((self.chosen_rewards - self.rejected_rewards).mean())

    @property
    def accuracy(self) -> float:
        return float((self.chosen_rewards > self.rejected_rewards).float().mean())


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DPOOutput:
    """Sigmoid DPO loss (Rafailov et al. 2023) on summed sequence log-probs, shape [B] each."""
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    loss = -F.logsigmoid(beta * logits).mean()
    return DPOOutput(
        loss=loss,
        chosen_rewards=(beta * (policy_chosen - ref_chosen)).detach(),
        rejected_rewards=(beta * (policy_rejected - ref_rejected)).detach(),
    )


def _left_pad(seqs: list[list[int]], pad_id: int, device):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def sequence_logps(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> torch.Tensor:
    """Sum of log p(completion | prompt) per row, shape [B].

    Rows are left-padded so that every completion ends at the last position; then only the last
    K+1 positions' logits are computed (from a contiguous hidden state), K = the longest completion.
    """
    from flowdpo.flow.decoding import causal_lm_logits

    seqs = [p + c for p, c in zip(prompts, completions)]
    k = max(len(c) for c in completions)
    ids, mask, pos = _left_pad(seqs, pad_id, model.device)
    comp_mask = torch.zeros((len(seqs), k), dtype=torch.bool)
    for i, c in enumerate(completions):
        comp_mask[i, k - len(c) :] = True
    comp_mask = comp_mask.to(ids.device)
    logits = causal_lm_logits(model, ids, mask, pos, keep=k + 1)
    logits = logits[:, :-1, :].float()  # position t predicts token t+1: the last K tokens
    targets = ids[:, ids.shape[1] - k :]
    token_logps = selective_log_softmax(logits, targets)
    return (token_logps * comp_mask).sum(-1)


def next_token_logps(model, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
    """Log-softmax of the next token after each prompt, shape [B, vocab] (float32)."""
    from flowdpo.flow.decoding import causal_lm_logits

    ids, mask, pos = _left_pad(prompts, pad_id, model.device)
    logits = causal_lm_logits(model, ids, mask, pos, keep=1)[:, -1, :].float()
    return torch.log_softmax(logits, dim=-1)


def set_logsumexp(logp: torch.Tensor, token_sets: list[list[int]]) -> torch.Tensor:
    """logsumexp over each row's token set: log P(next token in set), shape [B]."""
    width = max(len(s) for s in token_sets)
    index = torch.zeros((len(token_sets), width), dtype=torch.long)
    valid = torch.zeros((len(token_sets), width), dtype=torch.bool)
    for i, s in enumerate(token_sets):
        index[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        valid[i, : len(s)] = True
    picked = logp.gather(-1, index.to(logp.device)).masked_fill(~valid.to(logp.device), float("-inf"))
    return torch.logsumexp(picked, dim=-1)


def token_set_logps(model, prompts: list[list[int]], token_sets: list[list[int]], pad_id: int) -> torch.Tensor:
    """log P(next token in set | prompt) = logsumexp of the set's next-token log-probs, per row, shape [B].

    This is the Stop decision's own quantity: P(yes) reads the yes-set against the no-set
    (`flowdpo.flow.engine.stop_probability`), so a DPO pair (chosen set vs rejected set) moves exactly the
    decision's log-odds."""
    return set_logsumexp(next_token_logps(model, prompts, pad_id), token_sets)


def pair_logps(model, pairs: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(chosen), log pi(rejected)) of a list of pair records, each scored as its `scoring` says:
    "sequence" (the default: a chunk's summed token log-probs) or "token-set" (a Stop decision: one
    forward of the prompt, both sets read from it)."""
    from flowdpo.flow.rollouts import SCORING_SEQUENCE as SEQUENCE
    from flowdpo.flow.rollouts import SCORING_TOKEN_SET as TOKEN_SET

    scorings = {p.get("scoring", SEQUENCE) for p in pairs}
    if len(scorings) != 1:
        raise ValueError(f"a batch of pairs mixes scorings {sorted(scorings)}")
    scoring = scorings.pop()
    n = len(pairs)
    if scoring == SEQUENCE:
        prompts = [p["promptIds"] for p in pairs] * 2
        sides = [p["chosenIds"] for p in pairs] + [p["rejectedIds"] for p in pairs]
        logps = sequence_logps(model, prompts, sides, pad_id)
        return logps[:n], logps[n:]
    if scoring == TOKEN_SET:
        logp = next_token_logps(model, [p["promptIds"] for p in pairs], pad_id)
        return set_logsumexp(logp, [p["chosenIds"] for p in pairs]), set_logsumexp(logp, [p["rejectedIds"] for p in pairs])
    raise ValueError(f"unknown pair scoring {scoring!r}")
