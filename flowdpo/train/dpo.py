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


def sequence_logps(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> torch.Tensor:
    """Sum of log p(completion | prompt) per row, shape [B].

    Rows are left-padded so that every completion ends at the last position; then only the last
    K+1 positions' logits are computed (`logits_to_keep`), K = the longest completion.
    """
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    k = max(len(c) for c in completions)
    dev = model.device
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    comp_mask = torch.zeros((len(seqs), k), dtype=torch.bool)
    for i, (s, c) in enumerate(zip(seqs, completions)):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
        comp_mask[i, k - len(c) :] = True
    ids, mask, comp_mask = ids.to(dev), mask.to(dev), comp_mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=k + 1).logits
    logits = logits[:, :-1, :].float()  # position t predicts token t+1: the last K tokens
    targets = ids[:, width - k :]
    token_logps = selective_log_softmax(logits, targets)
    return (token_logps * comp_mask).sum(-1)
