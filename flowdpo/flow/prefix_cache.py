"""The prefix KV cache: keys/values of every sequence fed to the model, per adapter and version, bounded in bytes (least recently used first out); a new context reuses its longest cached prefix."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# The prefix cache keeps at most this many bytes of keys/values per backend (FLOWDPO_KV_CACHE_MB):
# 512 MiB hold ~22k tokens of SmolLM2-135M, more than one shard of the quickstart needs at once.
DEFAULT_CACHE_BYTES = 512 * 2**20


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
