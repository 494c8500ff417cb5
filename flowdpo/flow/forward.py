"""One forward pass of the model: grouped-query attention without repeated K/V, logits only where needed (from a contiguous hidden state: a non-contiguous view makes the LM-head matmul copy its whole weight), inverse-CDF sampling."""

from __future__ import annotations

import torch

from flowdpo.flow.row_adapters import unsupported_adapters

ATTN_IMPLEMENTATION = "flowdpo_gqa"


def gqa_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Scaled dot-product attention for grouped-query models without materialising repeated K/V.

    query [B, H, q, d], key/value [B, Hkv, T, d], attention_mask additive [B, 1, q, >=T] or None.
    Returns ([B, q, H, d], None) like transformers' eager attention."""
    b, h, q, d = query.shape
    hkv, t = key.shape[1], key.shape[-2]
    g = h // hkv
    qg = query.reshape(b, hkv, g * q, d)
    scores = torch.matmul(qg, key.transpose(-1, -2)) * scaling  # [B, Hkv, g*q, T]
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :t]
        scores = (scores.view(b, hkv, g, q, t) + mask.unsqueeze(2)).view(b, hkv, g * q, t)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs, value)  # [B, Hkv, g*q, d]
    return out.view(b, h, q, d).transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register `gqa_attention` (with transformers' additive eager mask) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, gqa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, eager_mask)
    return ATTN_IMPLEMENTATION


def supports_fast_path(hf_model) -> bool:
    """Our KV buffer and attention assume every layer is plain full attention (Llama/Qwen/Mistral-like), and
    `RowAdapters` plain LoRA on linear layers."""
    if unsupported_adapters(hf_model) is not None:
        return False
    cfg = (
        hf_model.config.get_text_config(decoder=True)
        if hasattr(hf_model.config, "get_text_config")
        else hf_model.config
    )
    types = getattr(cfg, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False
    return hasattr(hf_model, "model") and hasattr(hf_model, "lm_head")


# -- logits -----------------------------------------------------------------------------------------------
def lm_logits(hf_model, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits of `hidden` [..., H], made contiguous first (a strided view makes the frozen head's
    matmul copy its weight per call: measured 1.27x on the whole engine, ~1 GB per sequence at 8B)."""
    logits = hf_model.lm_head(hidden.contiguous())
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def causal_lm_logits(model, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions of a (peft-wrapped or plain) causal LM, through `lm_logits`.

    This is how every forward of the project that needs a few positions' logits (DPO log-probs, the Stop
    decision) computes them, so the strided-head copy never comes back."""
    hf = hf_model(model)
    hidden = hf.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state
    return lm_logits(hf, hidden[:, -keep:, :])


def hf_model(model):
    """The transformers CausalLM under a peft wrapper (peft injects its layers in place, so adapters and
    `disable_adapter()` still apply through it)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


# -- sampling ---------------------------------------------------------------------------------------------
def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of `logits` [B, V]: greedy at temperature 0, else inverse-CDF sampling of
    softmax(logits / T) restricted to the top-p nucleus (no top-k). Uses the global torch generator."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    u = torch.rand((probs.shape[0], 1), device=probs.device)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cdf = sorted_p.cumsum(-1)
        keep = (cdf - sorted_p) < top_p  # the smallest prefix whose mass reaches top_p (>= 1 token)
        sorted_p = sorted_p * keep
        cdf = sorted_p.cumsum(-1)
        idx = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=probs.shape[-1] - 1)
        return order.gather(-1, idx).squeeze(-1)
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=probs.shape[-1] - 1).squeeze(-1)


# -- prefix cache -----------------------------------------------------------------------------------------


def kv_bytes_per_token(hf_model) -> int:
    cfg = hf_model.config
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * n_kv * head_dim * torch.finfo(hf_model.dtype).bits // 8
