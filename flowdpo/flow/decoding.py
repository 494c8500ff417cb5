"""Batched generation on an in-process transformers model at the speed of its forward passes.

The flow asks the same model for many short continuations of contexts that mostly share long prefixes:
chunk k+1 continues the context of chunk k, every rollout repeats its main chain's prefix, and every
Stop prompt repeats the question and the partial answer of the one before. `generate()` in transformers
prefills each context from scratch, pads every batch to its longest row, and adds per-call overhead.
This module does the minimum the tokens require:

- **Prefix KV cache** (`PrefixCache`): the keys/values of every sequence fed to the model are kept (per
  adapter and version, bounded in bytes, least recently used first out); a new context reuses its
  longest cached prefix and only its new suffix is computed.
- **One preallocated KV buffer per batch** (`_BufferLayer`): cached prefixes are copied in once, new
  tokens are written in place (no `torch.cat` per step). Rows keep their own positions (`position_ids`)
  and the attention mask hides the gaps, so rows of different lengths share a batch without recomputing
  padding; suffixes of very different lengths are prefilled in separate groups.
- **Grouped-query attention without repeating K/V** (`gqa_attention`, registered as an attention
  implementation): the eager path copies the whole cache once per layer and step to repeat its heads.
- **Several adapters in one forward** (`RowAdapters`): each row names its adapter (or the base model);
  every LoRA layer computes the base matmul once for the whole batch and adds B·A·x only on the rows of
  each adapter (rank 8: ~4% more FLOPs). The untrained flow, the zero-shot pass, the Answer adapter and
  the Stop adapter therefore share batches instead of taking turns.
- **A plain decode loop** with inverse-CDF sampling (temperature, top-p) on the torch generator, so a
  seeded run samples the same tokens; rows that finish leave the batch.
- **Logits only where needed**, computed from a contiguous hidden state (a non-contiguous `[:, -k:]`
  view makes the LM-head matmul copy its whole weight; `lm_logits`).

Outputs are token ids ending at (and including) the first EOS, exactly like the `GenerationBackend`
protocol promises.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch

ATTN_IMPLEMENTATION = "flowdpo_gqa"

# A batch's KV buffer holds at most this many token positions (rows x length), bounding its memory:
# 16k positions of SmolLM2-135M are ~370 MB in bf16.
DEFAULT_MAX_BATCH_POSITIONS = 16384
# The prefix cache keeps at most this many bytes of keys/values per backend (FLOWDPO_KV_CACHE_MB):
# 512 MiB hold ~22k tokens of SmolLM2-135M, more than one shard of the quickstart needs at once.
DEFAULT_CACHE_BYTES = 512 * 2**20


# -- attention ------------------------------------------------------------------------------------------
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
    if _unsupported_adapters(hf_model) is not None:
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
    hf = _hf_model(model)
    hidden = hf.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state
    return lm_logits(hf, hidden[:, -keep:, :])


def _hf_model(model):
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
@dataclass
class _Entry:
    mode: object
    tokens: list[int]
    kv: torch.Tensor  # [L, 2, Hkv, n, d]
    keys: list[int]  # prefix hashes registered for this entry

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


def _prefix_hashes(tokens: list[int], mode: object = None) -> list[int]:
    out, h = [], hash(mode)
    for t in tokens:
        h = hash((h, t))
        out.append(h)
    return out


class PrefixCache:
    """Keys/values of token sequences already fed to the model, per mode (the weights they were computed
    with: base model, or an adapter at a version), in one byte budget.

    `lookup(tokens, mode)` finds the longest cached prefix of `tokens` under `mode` (any prefix of any entry
    counts); `insert` stores a sequence's keys/values and drops entries it extends. Entries leave least
    recently used first once `max_bytes` is exceeded; `drop(mode)` forgets a mode whose weights changed."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._index: dict[int, tuple[int, int]] = {}  # prefix hash -> (entry id, prefix length)
        self._next_id = 0
        self.bytes = 0
        self.hit_tokens = 0
        self.miss_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: list[int], mode: object = None) -> tuple[_Entry | None, int]:
        hashes = _prefix_hashes(tokens, mode)
        for n in range(len(tokens), 0, -1):
            hit = self._index.get(hashes[n - 1])
            if hit is None:
                continue
            eid, length = hit
            entry = self._entries.get(eid)
            if entry is None or length != n or entry.mode != mode or entry.tokens[:n] != tokens[:n]:
                continue
            self._entries.move_to_end(eid)
            return entry, n
        return None, 0

    def insert(self, tokens: list[int], kv: torch.Tensor, mode: object = None) -> None:
        if not tokens or kv.numel() * kv.element_size() > self.max_bytes:
            return
        hashes = _prefix_hashes(tokens, mode)
        # An entry that is a prefix of this one is now redundant.
        for n in range(len(tokens), 0, -1):
            hit = self._index.get(hashes[n - 1])
            if hit is not None and hit[1] == n:
                old = self._entries.get(hit[0])
                if old is not None and old.mode == mode and len(old.tokens) == n and old.tokens == tokens[:n]:
                    self._drop(hit[0])
        eid = self._next_id
        self._next_id += 1
        entry = _Entry(mode, list(tokens), kv, hashes)
        self._entries[eid] = entry
        for n, h in enumerate(hashes, start=1):
            self._index[h] = (eid, n)
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            self._drop(next(iter(self._entries)))

    def drop(self, predicate) -> None:
        """Forget every entry whose mode satisfies `predicate(mode)`."""
        for eid in [eid for eid, e in self._entries.items() if predicate(e.mode)]:
            self._drop(eid)

    def _drop(self, eid: int) -> None:
        entry = self._entries.pop(eid)
        self.bytes -= entry.nbytes
        for n, h in enumerate(entry.keys, start=1):
            if self._index.get(h) == (eid, n):
                del self._index[h]

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self.bytes = 0


# -- adapters per row -------------------------------------------------------------------------------------
class RowAdapters:
    """LoRA adapters applied per row inside one forward: `groups` is a list of (start, end, adapter) row
    ranges (adapter None = the base model). Each LoRA linear layer computes its base matmul for all rows
    and adds scale * (x A^T) B^T on each adapter's rows, from copies of A^T and B^T in the model's dtype made
    once per adapter version. peft's own forward is untouched outside `use()`; the trainer keeps training
    the peft weights, and `invalidate(adapter)` after an update makes the next call copy them again."""

    def __init__(self, model):
        self.layers = _lora_layers(model)
        self._weights: dict[str, list[tuple[torch.Tensor, torch.Tensor] | None]] = {}
        self.groups: list[tuple[int, int, str | None]] = []

    def invalidate(self, adapter: str | None = None) -> None:
        if adapter is None:
            self._weights.clear()
        else:
            self._weights.pop(adapter, None)

    def _for(self, adapter: str) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        if adapter not in self._weights:
            out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            with torch.no_grad():
                for layer in self.layers:
                    # No LoRA on this layer, or LoRA B still all zero (an untrained adapter): nothing to add.
                    if adapter not in layer.lora_A or not layer.lora_B[adapter].weight.any():
                        out.append(None)
                        continue
                    dtype = layer.base_layer.weight.dtype
                    a_t = layer.lora_A[adapter].weight.detach().t().to(dtype).contiguous()
                    b_t = (
                        (layer.lora_B[adapter].weight.detach().float() * layer.scaling[adapter])
                        .t()
                        .to(dtype)
                        .contiguous()
                    )
                    out.append((a_t, b_t))
            if not any(adapter in layer.lora_A for layer in self.layers):
                raise KeyError(f"the model has no LoRA adapter named {adapter!r}")
            self._weights[adapter] = out
        return self._weights[adapter]

    @contextlib.contextmanager
    def use(self):
        """Route every LoRA layer through the per-row forward while inside."""
        for i, layer in enumerate(self.layers):
            layer.forward = self._layer_forward(i, layer)
        try:
            yield self
        finally:
            for layer in self.layers:
                del layer.forward

    def _layer_forward(self, i: int, layer):
        base = layer.base_layer

        def forward(x, *args, **kwargs):
            out = base(x, *args, **kwargs)
            for start, end, adapter in self.groups:
                if adapter is None:
                    continue
                w = self._for(adapter)[i]
                if w is not None:
                    out[start:end] += (x[start:end] @ w[0]) @ w[1]
            return out

        return forward


def _lora_layers(model) -> list:
    """peft's LoRA linear layers of `model` (peft injects them in place of the adapted nn.Linear)."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def _unsupported_adapters(model) -> str | None:
    """Why `RowAdapters` cannot serve this model's adapters (None: it can)."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover
        return None
    for m in model.modules():
        if isinstance(m, LoraLayer) and not isinstance(m, LoraLinear):
            return f"LoRA on a {type(m).__name__} layer"
        if isinstance(m, LoraLinear) and any(getattr(m, "use_dora", {}).values()):
            return "DoRA adapters"
    return None


# -- the batch KV buffer ----------------------------------------------------------------------------------
def _buffer_layer_class():
    from transformers.cache_utils import DynamicLayer

    class _BufferLayer(DynamicLayer):
        """One layer's view of the batch KV buffer: new keys/values are written at `length`, in place."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
            super().__init__()
            self.keys, self.values, self.length = keys, values, length
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            self.keys[:, :, self.length : self.length + n] = key_states
            self.values[:, :, self.length : self.length + n] = value_states
            self.length += n
            return self.keys[:, :, : self.length], self.values[:, :, : self.length]

        def get_seq_length(self) -> int:
            return self.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

    return _BufferLayer


@dataclass
class _Row:
    index: int  # position in the caller's list
    context: list[int]
    mode: tuple[str | None, int]  # (adapter or None for the base model, version)
    cached: int  # tokens of the context whose KV comes from the prefix cache
    entry: object | None
    generated: list[int]
    done: bool = False

    @property
    def suffix(self) -> int:
        return len(self.context) - self.cached


class Decoder:
    """Generation and next-token log-probs for one in-process model, with the caches described above.

    Each context runs under a mode `(adapter, version)`: adapter None is the base model, otherwise a peft
    adapter name; `version` names that adapter's current weights (keys/values cached under an older
    version are never reused)."""

    def __init__(
        self,
        model,
        eos_ids: frozenset[int],
        pad_id: int,
        *,
        max_batch: int = 64,
        max_batch_positions: int = DEFAULT_MAX_BATCH_POSITIONS,
        cache_bytes: int | None = None,
    ):
        self.model = model
        self.hf = _hf_model(model)
        if not supports_fast_path(self.hf):
            raise ValueError("the fast decoder needs full-attention layers and plain LoRA on linear layers")
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_batch_positions = max_batch_positions
        if cache_bytes is None:
            cache_bytes = int(float(os.environ.get("FLOWDPO_KV_CACHE_MB", DEFAULT_CACHE_BYTES / 2**20)) * 2**20)
        self.cache_bytes = cache_bytes
        cfg = self.hf.config
        self.n_layers = cfg.num_hidden_layers
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.adapters = RowAdapters(model)
        self.cache = PrefixCache(cache_bytes)
        self._layer_cls = _buffer_layer_class()
        self.tokens_generated = 0
        self.stats = {
            "prefill_tokens": 0,
            "cached_tokens": 0,
            "forwards": 0,
            "forward_rows": 0,
            "decode_steps": 0,
            "decode_rows": 0,
        }
        register_attention()

    # -- caches --------------------------------------------------------------------------------------
    def invalidate(self, adapter: str | None = None) -> None:
        """The weights of `adapter` (None: of every adapter) changed: drop their copies and cached keys."""
        self.adapters.invalidate(adapter)
        self.cache.drop(lambda mode: mode[0] is not None and (adapter is None or mode[0] == adapter))

    def reset(self) -> None:
        """Forget cached keys/values: the next calls compute exactly as from a cold start."""
        self.cache.clear()

    # -- public calls --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, contexts, modes, max_new_tokens, temperature, top_p) -> list[list[int]]:
        """Sample up to `max_new_tokens` after each context (ending at and including the first EOS);
        `modes[i]` = (adapter or None, version) of context i."""
        out: list[list[int] | None] = [None] * len(contexts)
        with self._running():
            for rows in self._batches(contexts, modes, max_new_tokens):
                self._run(rows, max_new_tokens, temperature, top_p, None)
                for r in rows:
                    out[r.index] = r.generated
                    self.tokens_generated += len(r.generated)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def next_token_logprobs(self, contexts, modes, token_ids) -> list[list[float]]:
        out: list[list[float] | None] = [None] * len(contexts)
        ids = torch.tensor(list(token_ids), dtype=torch.long)
        with self._running():
            for rows in self._batches(contexts, modes, 0):
                logp = self._run(rows, 0, 0.0, 1.0, ids)
                for r, lp in zip(rows, logp.tolist()):
                    out[r.index] = lp
        return out  # type: ignore[return-value]

    # -- internals -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _running(self):
        was_training = self.model.training
        self.model.eval()
        previous = self.hf.config._attn_implementation
        self.hf.set_attn_implementation(ATTN_IMPLEMENTATION)
        try:
            with self.adapters.use():
                yield
        finally:
            self.hf.set_attn_implementation(previous)
            self.model.train(was_training)

    def _batches(self, contexts, modes, max_new: int):
        order = {
            m: i
            for i, m in enumerate(sorted({m for m in modes}, key=lambda m: (m[0] is not None, str(m[0]))))
        }
        rows = []
        for i, (ctx, mode) in enumerate(zip(contexts, modes)):
            if not ctx:
                raise ValueError("cannot continue an empty context")
            entry, n = self.cache.lookup(ctx, mode)
            n = min(n, len(ctx) - 1)  # the last context token is always fed: its logits are needed
            rows.append(_Row(i, list(ctx), mode, n, entry if n > 0 else None, []))
        # Rows of one mode together (few adapter groups per forward), then similar suffix lengths (prefill
        # padding), then similar cached lengths (attention).
        rows.sort(key=lambda r: (order[r.mode], r.suffix, r.cached))
        batch: list[_Row] = []
        width = 0
        for r in rows:
            w = max(width, len(r.context) + max_new)
            if batch and (len(batch) >= self.max_batch or w * (len(batch) + 1) > self.max_batch_positions):
                yield batch
                batch, w = [], len(r.context) + max_new
            batch.append(r)
            width = w
        if batch:
            yield batch

    def _set_groups(self, rows: list[_Row]) -> None:
        groups: list[tuple[int, int, str | None]] = []
        for j, r in enumerate(rows):
            if groups and groups[-1][2] == r.mode[0]:
                groups[-1] = (groups[-1][0], j + 1, r.mode[0])
            else:
                groups.append((j, j + 1, r.mode[0]))
        self.adapters.groups = groups

    def _run(self, rows: list[_Row], max_new: int, temperature: float, top_p: float, score_ids):
        dev = self.hf.device
        dtype = self.hf.dtype
        b = len(rows)
        c_max = max(r.cached for r in rows)
        s_max = max(r.suffix for r in rows)
        cap = c_max + s_max + max_new
        buf = torch.zeros((self.n_layers, 2, b, self.n_kv, cap, self.head_dim), dtype=dtype, device=dev)
        mask = torch.zeros((b, cap), dtype=torch.long, device=dev)
        last_pos = torch.zeros(b, dtype=torch.long, device=dev)
        for i, r in enumerate(rows):
            if r.cached:
                buf[:, :, i, :, c_max - r.cached : c_max] = r.entry.kv[:, :, :, : r.cached].to(dev)
                mask[i, c_max - r.cached : c_max] = 1
            mask[i, c_max + s_max - r.suffix : c_max + s_max] = 1
            last_pos[i] = len(r.context) - 1
            self.stats["cached_tokens"] += r.cached
            self.stats["prefill_tokens"] += r.suffix
            self.cache.hit_tokens += r.cached
            self.cache.miss_tokens += r.suffix

        # Prefill the new suffixes, in groups of one mode and similar length.
        logits = torch.empty((b, self.hf.config.vocab_size), dtype=torch.float32, device=dev)
        for a, z in _groups([(r.mode, r.suffix) for r in rows]):
            s = max(r.suffix for r in rows[a:z])
            ids = torch.full((z - a, s), self.pad_id, dtype=torch.long)
            pos = torch.zeros((z - a, s), dtype=torch.long)
            for j, r in enumerate(rows[a:z]):
                ids[j, s - r.suffix :] = torch.tensor(r.context[r.cached :], dtype=torch.long)
                pos[j, s - r.suffix :] = torch.arange(r.cached, len(r.context))
            layers = [
                self._layer_cls(buf[layer, 0, a:z], buf[layer, 1, a:z], c_max + s_max - s)
                for layer in range(self.n_layers)
            ]
            self._set_groups(rows[a:z])
            logits[a:z] = self._forward(ids.to(dev), mask[a:z, : c_max + s_max], pos.to(dev), layers).float()
            self.stats["forward_rows"] += z - a

        if score_ids is not None:  # next-token log-probs only
            logp = torch.log_softmax(logits, dim=-1)[:, score_ids.to(dev)].cpu()
            for i, r in enumerate(rows):
                self._store(r, buf, mask, i, len(r.context))
            return logp

        # Decode: every row has the same budget; finished rows leave the batch when enough have finished.
        live = list(range(b))  # buffer row -> rows index
        length = c_max + s_max
        for step in range(max_new):
            nxt = sample_tokens(logits, temperature, top_p).tolist()
            for j, i in enumerate(live):
                r = rows[i]
                if r.done:
                    continue
                t = nxt[j]
                r.generated.append(t)
                if t in self.eos_ids or len(r.generated) >= max_new:
                    r.done = True
            active = [j for j, i in enumerate(live) if not rows[i].done]
            if not active:
                break
            if len(active) <= 0.75 * len(live) and max_new - step > 2:
                for j, i in enumerate(live):
                    if rows[i].done:
                        self._store(rows[i], buf, mask, j, len(rows[i].context) + len(rows[i].generated) - 1)
                keep = torch.tensor(active, dtype=torch.long, device=dev)
                buf = buf.index_select(2, keep)
                mask = mask.index_select(0, keep)
                last_pos = last_pos.index_select(0, keep)
                live = [live[j] for j in active]
                nxt = [nxt[j] for j in active]
            step_ids = torch.tensor([[t] for t in nxt], dtype=torch.long, device=dev)
            feeding = torch.tensor([0 if rows[i].done else 1 for i in live], dtype=torch.long, device=dev)
            mask[:, length] = feeding
            last_pos = last_pos + feeding
            layers = [self._layer_cls(buf[layer, 0], buf[layer, 1], length) for layer in range(self.n_layers)]
            self._set_groups([rows[i] for i in live])
            logits = self._forward(step_ids, mask[:, : length + 1], last_pos.unsqueeze(1), layers).float()
            length += 1
            self.stats["decode_steps"] += 1
            self.stats["decode_rows"] += len(live)
            self.stats["forward_rows"] += len(live)
        for j, i in enumerate(live):
            r = rows[i]
            self._store(r, buf, mask, j, len(r.context) + len(r.generated) - 1)
        return None

    def _forward(self, ids, mask, pos, layers) -> torch.Tensor:
        from transformers.cache_utils import Cache

        self.stats["forwards"] += 1
        out = self.hf.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=Cache(layers=layers),
            use_cache=True,
        )
        return lm_logits(self.hf, out.last_hidden_state[:, -1, :])

    def _store(self, r: _Row, buf, mask, j: int, fed: int) -> None:
        """Keep the keys/values of the `fed` tokens row `j` of the buffer holds (context + generated)."""
        idx = mask[j].nonzero().squeeze(-1)
        if idx.numel() != fed:  # pragma: no cover - a bookkeeping bug; never cache wrong keys
            raise AssertionError(f"KV buffer row holds {idx.numel()} tokens, expected {fed}")
        kv = buf[:, :, j].index_select(3, idx)
        self.cache.insert((r.context + r.generated)[:fed], kv, r.mode)


def _groups(keys: list[tuple[object, int]]):
    """Split rows sorted by (mode, suffix length) into contiguous groups of one mode whose padding stays
    small (prefill forwards)."""
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i][0] != keys[start][0] or keys[i][1] > 1.5 * keys[start][1] + 8:
            yield start, i
            start = i


def kv_bytes_per_token(hf_model) -> int:
    cfg = hf_model.config
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * n_kv * head_dim * torch.finfo(hf_model.dtype).bits // 8


__all__ = [
    "ATTN_IMPLEMENTATION",
    "Decoder",
    "PrefixCache",
    "RowAdapters",
    "causal_lm_logits",
    "gqa_attention",
    "kv_bytes_per_token",
    "lm_logits",
    "register_attention",
    "sample_tokens",
    "supports_fast_path",
]
