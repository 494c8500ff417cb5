"""The online trainer: consumes finished shards in order, trains both adapters with DPO, publishes
versioned adapters, and checkpoints itself so that a killed run resumes exactly.

Per shard (in shard order):
  1. count its outcomes into progressive validation accuracy (each example once: a shard is consumed once);
  2. queue its pairs per adapter; every `batch_size` queued pairs make one optimizer step;
  3. publish each adapter that stepped as a new version (folder first, then adapters/LATEST.json);
  4. write a new trainer-state object and move trainer/state/LATEST.json to it.
A crash between any two writes leaves either the old or the new state; orphaned adapter folders are
skipped by taking new versions above the highest one in storage, so versions only go up.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field

import torch

from flowdpo.names import ADAPTERS
from flowdpo.run.records import check_pairs, read_results
from flowdpo.spec import RunSpec
from flowdpo.storage import CorruptObjectError, ObjectStore, RunLayout
from flowdpo.train import canary
from flowdpo.train.adapters import (
    adapter_files,
    adapter_parameters,
    load_adapter_weights,
    load_optimizer,
    optimizer_bytes,
)
from flowdpo.train.dpo import dpo_step

log = logging.getLogger(__name__)


def read_pairs(store: ObjectStore, shard: int, results: list[dict] | None = None) -> list[dict]:
    """The pairs of the attempt whose results won the shard."""
    if results is None:
        results = read_results(store, shard)
    if not results:
        return []
    attempt = results[0].get("attempt")  # its type and form are checked by read_results
    if attempt is None:
        raise CorruptObjectError(f"{store.uri}/{RunLayout.results(shard)} row 1", "names no attempt whose pairs to read")
    key = RunLayout.pairs(shard, attempt)
    return check_pairs(store.get_jsonl(key), f"{store.uri}/{key}")


def coin(seed: int, pair_id: str) -> bool:
    """A fair, seeded coin per pair (the control run's label swaps): the same on every resume."""
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()[0] & 1 == 1


def swapped(pair: dict) -> dict:
    return {
        **pair,
        "chosenIds": pair["rejectedIds"],
        "rejectedIds": pair["chosenIds"],
        "chosenText": pair.get("rejectedText"),
        "rejectedText": pair.get("chosenText"),
    }


def _per_adapter(value=0):
    return lambda: {a: value for a in ADAPTERS}


@dataclass
class TrainerState:
    consumed: list[int] = field(default_factory=list)
    pending: dict[str, list[list]] = field(default_factory=lambda: {a: [] for a in ADAPTERS})  # [shard, pairId]
    versions: dict[str, int] = field(default_factory=_per_adapter())
    steps: dict[str, int] = field(default_factory=_per_adapter())
    examples: int = 0
    correct: int = 0
    baselines: dict[str, list[int]] = field(default_factory=dict)  # name -> [examples, correct]
    pairs_mined: dict[str, int] = field(default_factory=_per_adapter())
    pairs_trained: dict[str, int] = field(default_factory=_per_adapter())
    last: dict[str, dict] = field(default_factory=dict)  # adapter -> {loss, margin, accuracy}
    elapsed_seconds: float = 0.0
    finished: bool = False

    @property
    def progressive_accuracy(self) -> float | None:
        return self.correct / self.examples if self.examples else None


class OnlineTrainer:
    """`leader` (a `flowdpo.train.parallel.Leader`, rank 0 of a data-parallel trainer): every optimizer step
    is sent to the other ranks first and computed by all of them; everything else happens here only."""

    def __init__(self, model, tokenizer, spec: RunSpec, store: ObjectStore, leader=None):
        self.model, self.tokenizer, self.spec, self.store = model, tokenizer, spec, store
        self.leader = leader
        t = spec.training
        self.trainable = [a for a in ADAPTERS if getattr(t, f"train_{a}")]
        self.optimizers = {
            a: torch.optim.AdamW(adapter_parameters(model, a), lr=t.lr(a), weight_decay=t.weight_decay)
            for a in self.trainable
        }
        self.state = TrainerState()
        self._stepped: set[str] = set()
        self._clock = time.monotonic()
        self._prompt_builder = None

    @property
    def _prompts(self):
        if self._prompt_builder is None:
            from flowdpo.flow.prompts import PromptBuilder

            self._prompt_builder = PromptBuilder(self.tokenizer, self.spec.flow)
        return self._prompt_builder

    # -- resume ----------------------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the latest checkpoint from storage into the model and optimizers. False if none."""
        pointer = self.store.get_json_or(RunLayout.trainer_latest)
        if pointer is None:
            return False
        where = f"{self.store.uri}/{RunLayout.trainer_latest}"
        if not isinstance(pointer, dict) or not isinstance(pointer.get("key"), str):
            raise CorruptObjectError(where, 'not a trainer state pointer ({"key": "trainer/state/..."})')
        raw = self.store.get_json(pointer["key"])
        try:
            self.state = TrainerState(**raw)
            versions = {a: int(self.state.versions[a]) for a in ADAPTERS}
        except (TypeError, KeyError, ValueError) as e:
            raise CorruptObjectError(f"{self.store.uri}/{pointer['key']}", f"not a trainer state ({e})") from None
        for a in ADAPTERS:
            v = versions[a]
            if v == 0:
                continue
            key = f"{RunLayout.adapter(a, v)}/adapter_model.safetensors"
            try:
                load_adapter_weights(self.model, a, self.store.get(key))
            except KeyError:
                raise CorruptObjectError(f"{self.store.uri}/{key}", "missing, though the trainer state names it") from None
            except Exception as e:  # noqa: BLE001 - safetensors raises its own types; a wrong shape: ValueError
                raise CorruptObjectError(f"{self.store.uri}/{key}", f"not this run's adapter weights ({e})") from None
            if a in self.optimizers:
                key = RunLayout.optimizer(a, v)
                try:
                    load_optimizer(self.optimizers[a], self.store.get(key))
                except KeyError:
                    raise CorruptObjectError(f"{self.store.uri}/{key}", "missing, though the trainer state names it") from None
                except Exception as e:  # noqa: BLE001 - torch.load unpickling errors, another optimizer
                    raise CorruptObjectError(f"{self.store.uri}/{key}", f"not this run's optimizer state ({e})") from None
        # A crash between the state pointer and adapters/LATEST.json left the pointer one step behind:
        # publish the committed versions now (otherwise a run whose last step was that one would never
        # announce its final adapters to the workers).
        if any(self.state.versions.values()) and self.store.get_json_or(RunLayout.adapters_latest) != self.state.versions:
            self.store.put_json(RunLayout.adapters_latest, dict(self.state.versions))
        log.info("resumed trainer: %d shards consumed, versions %s", len(self.state.consumed), self.state.versions)
        return True

    # -- the online loop -------------------------------------------------------------------------------
    def consume(self, shard: int) -> None:
        if shard in self.state.consumed:
            return
        results = read_results(self.store, shard)
        pairs = read_pairs(self.store, shard, results)
        if pairs:  # token ids past the model's vocabulary would fail inside the embedding, mid-step
            vocab = self.model.get_input_embeddings().num_embeddings
            check_pairs(pairs, f"{self.store.uri}/{RunLayout.pairs(shard, results[0]['attempt'])}", vocab)
        st = self.state
        for r in results:
            st.examples += 1
            st.correct += int(r["correct"])
            for name, ok in r.get("baselines", {}).items():
                n, c = st.baselines.get(name, [0, 0])
                st.baselines[name] = [n + 1, c + int(ok)]
        by_id = {}
        for p in pairs:
            st.pairs_mined[p["adapter"]] += 1
            if p["adapter"] in self.trainable:
                st.pending[p["adapter"]].append([shard, p["pairId"]])
                by_id[(shard, p["pairId"])] = p
        bs = self.spec.training.batch_size
        for a in self.trainable:
            while len(st.pending[a]) >= bs:
                self._train_step(a, st.pending[a][:bs], by_id)
                st.pending[a] = st.pending[a][bs:]
        st.consumed.append(shard)
        self._checkpoint()

    def finish(self) -> None:
        """Train on the last, partial batches, publish the final adapters and mark the run finished."""
        if self.state.finished:
            return
        for a in self.trainable:
            if self.state.pending[a]:
                self._train_step(a, self.state.pending[a], {})
                self.state.pending[a] = []
        self.state.finished = True
        self._checkpoint()

    # -- internals -------------------------------------------------------------------------------------
    def _load_pairs(self, refs: list[list], known: dict) -> list[dict]:
        missing = {s for s, pid in refs if (s, pid) not in known}
        for s in missing:
            for p in read_pairs(self.store, s):
                known[(s, p["pairId"])] = p
        return [known[(s, pid)] for s, pid in refs]

    def _train_step(self, adapter: str, refs: list[list], known: dict) -> dict:
        pairs = self._load_pairs(refs, known)
        if self.spec.training.shuffle_preferences:
            pairs = [swapped(p) if coin(self.spec.seed, p["pairId"]) else p for p in pairs]
        step = self.state.steps[adapter]
        # Deterministic dropout per (seed, adapter, step): a resumed run repeats the same step exactly.
        seed = self.spec.seed * 1_000_003 + ADAPTERS.index(adapter) * 100_003 + step
        parallel = None
        if self.leader is not None:
            self.leader.step(adapter, pairs, seed)
            parallel = self.leader.parallel
        stats = dpo_step(
            self.model, adapter, pairs, self.optimizers[adapter], self.spec.training, self.tokenizer.pad_token_id, seed,
            parallel=parallel,
        )
        self.state.steps[adapter] = step + 1
        self.state.pairs_trained[adapter] += stats["pairs"]
        self.state.last[adapter] = stats
        self._stepped.add(adapter)
        log.info("dpo step %s#%d: loss %.4f margin %.4f", adapter, step + 1, stats["loss"], stats["margin"])
        return stats

    def _next_version(self, adapter: str) -> int:
        existing = self.store.list(RunLayout.adapter_versions_prefix(adapter))
        highest = max((RunLayout.version_of(k) for k in existing), default=0)
        return max(highest, self.state.versions[adapter]) + 1

    def _checkpoint(self) -> None:
        now = time.monotonic()
        self.state.elapsed_seconds += now - self._clock
        self._clock = now
        for a in sorted(self._stepped):
            v = self._next_version(a)
            folder = RunLayout.adapter(a, v)
            for fname, data in adapter_files(self.model, a).items():
                self.store.put(f"{folder}/{fname}", data)
            # What a server serving this version must answer (workers check it after each load).
            self.store.put(f"{folder}/{canary.CANARY_FILE}", canary.expected(self.model, self._prompts, a, v))
            self.store.put(RunLayout.optimizer(a, v), optimizer_bytes(self.optimizers[a]))
            self.state.versions[a] = v
        key = RunLayout.trainer_state(len(self.state.consumed), self.state.finished)
        self.store.put_json(key, asdict(self.state))
        self.store.put_json(RunLayout.trainer_latest, {"key": key})
        if self._stepped:
            self.store.put_json(RunLayout.adapters_latest, dict(self.state.versions))
        # Adam states of superseded versions are no longer reachable from the state pointer.
        for a in sorted(self._stepped):
            for key in self.store.list(RunLayout.optimizer_prefix(a)):
                if key != RunLayout.optimizer(a, self.state.versions[a]):
                    self.store.delete(key)
        self._stepped.clear()
