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
from dataclasses import dataclass

import torch

from flowdpo.flow.forward import (
    ATTN_IMPLEMENTATION,
    hf_model,
    lm_logits,
    register_attention,
    sample_tokens,
    supports_fast_path,
)
from flowdpo.flow.prefix_cache import DEFAULT_CACHE_BYTES, PrefixCache
from flowdpo.flow.row_adapters import RowAdapters, buffer_layer_class

# A batch's KV buffer holds at most this many token positions (rows x length), bounding its memory:
# 16k positions of SmolLM2-135M are ~370 MB in bf16.
DEFAULT_MAX_BATCH_POSITIONS = 16384


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
        self.hf = hf_model(model)
        if not supports_fast_path(self.hf):
            raise ValueError("the fast decoder needs full-attention layers and plain LoRA on linear layers")
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_batch_positions = max_batch_positions
        if cache_bytes is None:
            from flowdpo.envvars import env_number

            cache_bytes = int(env_number("FLOWDPO_KV_CACHE_MB", DEFAULT_CACHE_BYTES / 2**20, positive=True) * 2**20)
        self.cache_bytes = cache_bytes
        cfg = self.hf.config
        self.n_layers = cfg.num_hidden_layers
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.adapters = RowAdapters(model)
        self.cache = PrefixCache(cache_bytes)
        self._layer_cls = buffer_layer_class()
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
