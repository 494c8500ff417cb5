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
    from flowdpo.flow.forward import causal_lm_logits

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


def shared_prompt_logps(
    model, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(chosen_i | prompt_i), log p(rejected_i | prompt_i)), each shape [n], computing every prompt ONCE.

    A pair's two sides continue the same prompt: the prompts (left-padded) run first and their keys/values
    (with gradients, the adapter acts on the prompt too) are shared by both continuations, which run as one
    right-padded batch of 2n rows. Against scoring [prompt + chosen] and [prompt + rejected] as separate rows
    this saves the prompt's compute and activations once per pair (prompts are most of a chunk pair's
    tokens), and no row is padded to another pair's prompt length plus completion."""
    from transformers.cache_utils import DynamicCache

    from flowdpo.flow.forward import hf_model, lm_logits

    hf = hf_model(model)
    n = len(prompts)
    p_ids, p_mask, p_pos = _left_pad(prompts, pad_id, model.device)
    cache = DynamicCache()
    out = hf.model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, past_key_values=cache, use_cache=True)
    last = out.last_hidden_state[:, -1:, :]  # predicts each completion's first token
    sides = list(chosen) + list(rejected)
    width = max(len(c) for c in sides)
    c_ids = torch.full((2 * n, width), pad_id, dtype=torch.long)
    c_mask = torch.zeros((2 * n, width), dtype=torch.long)
    for i, c in enumerate(sides):
        c_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        c_mask[i, : len(c)] = 1
    c_ids, c_mask = c_ids.to(model.device), c_mask.to(model.device)
    starts = torch.tensor([len(p) for p in prompts] * 2, device=model.device)
    c_pos = starts[:, None] + torch.arange(width, device=model.device)[None, :]
    both = torch.arange(n, device=model.device).repeat(2)
    cache.batch_select_indices(both)  # each prompt's keys/values for its chosen row and its rejected row
    mask = torch.cat([p_mask.index_select(0, both), c_mask], dim=1)
    cont = hf.model(input_ids=c_ids, attention_mask=mask, position_ids=c_pos, past_key_values=cache, use_cache=True)
    hidden = torch.cat([last.index_select(0, both), cont.last_hidden_state[:, :-1, :]], dim=1)
    logits = lm_logits(hf, hidden).float()
    token_logps = selective_log_softmax(logits, c_ids) * c_mask
    logps = token_logps.sum(-1)
    return logps[:n], logps[n:]


def next_token_logps(model, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
    """Log-softmax of the next token after each prompt, shape [B, vocab] (float32)."""
    from flowdpo.flow.forward import causal_lm_logits

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
    if scoring == SEQUENCE:
        return shared_prompt_logps(
            model, [p["promptIds"] for p in pairs], [p["chosenIds"] for p in pairs], [p["rejectedIds"] for p in pairs], pad_id
        )
    if scoring == TOKEN_SET:
        logp = next_token_logps(model, [p["promptIds"] for p in pairs], pad_id)
        return set_logsumexp(logp, [p["chosenIds"] for p in pairs]), set_logsumexp(logp, [p["rejectedIds"] for p in pairs])
    raise ValueError(f"unknown pair scoring {scoring!r}")


def dpo_step(
    model, adapter: str, pairs: list[dict], optimizer, training, pad_id: int, seed: int, *, parallel=None
) -> dict:
    """One optimizer step of `adapter` on `pairs` (micro-batched, gradient-clipped); returns its statistics
    {loss, margin, accuracy, pairs}. `training` is a `flowdpo.spec.TrainingSpec`; `seed` fixes dropout, so a
    step repeated after a resume computes exactly the same update. The reference is the base model
    (adapters disabled). Leaves the model in eval mode with every parameter frozen.

    `parallel` (a `flowdpo.train.parallel.DataParallel`): every rank is called with the same `pairs` and
    scores its share; each pair's loss is weighted 1/len(pairs) and the gradients are summed over the ranks
    before clipping, so the update is the one-process update (up to floating-point summation order) and the
    statistics are those of the whole batch. Dropout is seeded per rank (rank 0 uses `seed` itself)."""
    from flowdpo.train.adapters import activate_for_training, adapter_parameters

    mine = pairs if parallel is None else parallel.share(pairs)
    torch.manual_seed(seed if parallel is None else seed + 1_000_033 * parallel.rank)
    activate_for_training(model, adapter)
    params = adapter_parameters(model, adapter)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, margin, accuracy (each times the micro-batch's pairs), pairs
    try:
        for i in range(0, len(mine), training.micro_batch_size):
            mb = mine[i : i + training.micro_batch_size]
            with torch.no_grad(), model.disable_adapter():
                ref_chosen, ref_rejected = pair_logps(model, mb, pad_id)
            pol_chosen, pol_rejected = pair_logps(model, mb, pad_id)
            out = dpo_loss(pol_chosen, pol_rejected, ref_chosen, ref_rejected, training.beta)
            (out.loss * len(mb) / len(pairs)).backward()
            for j, v in enumerate((out.loss.item(), out.margin, out.accuracy, 1.0)):
                sums[j] += v * len(mb)
        if parallel is not None:
            parallel.all_reduce_grads(params)
            sums = parallel.all_reduce_sum(sums)
        torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
        optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    total = sums[3]
    return {"loss": sums[0] / total, "margin": sums[1] / total, "accuracy": sums[2] / total, "pairs": int(total)}


@torch.no_grad()
def reward_margins(model, pairs: list[dict], pad_id: int, beta: float, batch: int = 8) -> torch.Tensor:
    """beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))] of each pair under the active adapter:
    > 0 where the adapter prefers the chosen side more than the base model does (held-out pair accuracy)."""
    out = []
    for i in range(0, len(pairs), batch):
        mb = pairs[i : i + batch]
        with model.disable_adapter():
            ref_c, ref_r = pair_logps(model, mb, pad_id)
        pol_c, pol_r = pair_logps(model, mb, pad_id)
        out.append(beta * ((pol_c - ref_c) - (pol_r - ref_r)))
    return torch.cat(out) if out else torch.zeros(0)
