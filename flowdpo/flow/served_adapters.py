"""Which served LoRA name a request uses, and when an old name may be unloaded (the vLLM backend's rules).

Every adapter version is served under its own name (`answer-v17`); version 0 of an adapter and the base
model are served by one all-zero adapter (`base_name`). The rules, all under one lock:

1. A request takes the name that is current for its adapter when it starts (`acquire`) and keeps it until
   it ends (`release`): a request never sees two versions.
2. `switch` makes a new version current for requests that start after it returns and retires the name it
   replaces.
3. A retired name is unloaded only once its last request has ended: `switch` and `release` return the
   names that have just become safe to unload, and `take_retired` hands each such name out exactly once.
4. A request chain (every flow of one example: its main chain, rollouts and baselines) `pin`s the names
   current when it starts and holds them until it ends (`unpin`): every request of the chain uses the same
   versions, and a name retired meanwhile stays loaded until the last chain pinning it has ended. A pin
   counts like one request on each name it holds.

Pure bookkeeping, no I/O: tested on its own (tests/unit/test_served_adapters.py) and used by
`flowdpo.flow.vllm_backend.VLLMBackend`, which does the HTTP calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from flowdpo.names import ADAPTERS

# The all-zero adapter that serves the base model and version 0 of each adapter (LoRA B = 0).
BASE_ZERO = "base-zero"


def lora_name(adapter: str, version: int) -> str:
    """The server-side name of one adapter version: a new name per version, never reused in place."""
    return f"{adapter}-v{version}"


class ServedAdapters:
    def __init__(self, base_name: str, adapters: Iterable[str] = ADAPTERS):
        self.base_name = base_name
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {a: 0 for a in adapters}
        self._current: dict[str, str] = {}  # adapter -> served name (absent: version 0 = base_name)
        self._inflight: dict[str, int] = {}
        self._retired: set[str] = set()
        self._version_of: dict[str, int] = {}  # served name -> the version it serves

    def versions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._versions)

    def current(self) -> dict[str, str]:
        """adapter -> the name new requests of it use now."""
        with self._lock:
            return {a: self._current.get(a, self.base_name) for a in self._versions}

    def inflight(self) -> dict[str, int]:
        """served name -> requests using it now (names with none are left out)."""
        with self._lock:
            return {k: v for k, v in self._inflight.items() if v}

    def acquire(self, adapter: str | None) -> str:
        """The name a request of `adapter` (None: the base model) uses; counted until `release`."""
        with self._lock:
            if adapter is None:
                name = self.base_name
            elif adapter in self._versions:
                name = self._current.get(adapter, self.base_name)
            else:
                raise ValueError(f"unknown adapter {adapter!r}; known: {sorted(self._versions)} or None (base model)")
            self._inflight[name] = self._inflight.get(name, 0) + 1
            return name

    def pin(self) -> dict[str | None, str]:
        """The names current now for every adapter and for the base model (key None), each counted until
        `unpin` (rule 4)."""
        with self._lock:
            names: dict[str | None, str] = {a: self._current.get(a, self.base_name) for a in self._versions}
            names[None] = self.base_name
            for n in names.values():
                self._inflight[n] = self._inflight.get(n, 0) + 1
            return names

    def pinned_versions(self, names: dict[str | None, str]) -> dict[str, int]:
        """The versions a pin serves (what its chain's lineage records)."""
        with self._lock:
            out = {}
            for a in self._versions:
                n = names[a]
                out[a] = 0 if n == self.base_name else self._version_of[n]
            return out

    def unpin(self, names: dict[str | None, str]) -> list[str]:
        """A chain ended: release its pin; returns the retired names that now have no request left."""
        idle: list[str] = []
        for n in names.values():
            idle += self.release(n)
        return sorted(set(idle))

    def release(self, name: str) -> list[str]:
        """A request using `name` ended; returns [name] when that was the last request of a retired name."""
        with self._lock:
            self._inflight[name] -= 1
            return [name] if self._inflight[name] == 0 and name in self._retired else []

    def switch(self, adapter: str, version: int, served: str) -> list[str]:
        """Serve `adapter` at `version` under `served` from now on; returns retired names with no request left."""
        with self._lock:
            if adapter not in self._versions:
                raise ValueError(f"unknown adapter {adapter!r}; known: {sorted(self._versions)}")
            old = self._current.get(adapter)
            self._current[adapter] = served
            self._versions[adapter] = version
            self._version_of[served] = version
            self._retired.discard(served)
            if old is not None and old != served:
                self._retired.add(old)
            return sorted(n for n in self._retired if self._inflight.get(n, 0) == 0)

    def take_retired(self, name: str) -> bool:
        """True exactly once for a retired name with no request left: the caller unloads it."""
        with self._lock:
            if name not in self._retired or self._inflight.get(name, 0):
                return False
            self._retired.discard(name)
            return True
