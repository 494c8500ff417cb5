"""The rollout worker: runs the flow with rollouts on a shard of examples and writes its outcomes and
mined pairs as whole objects (results/ and pairs/). The first completed result of a shard wins
(atomic create), so a shard redone after a crash is never counted twice.
"""

from __future__ import annotations

import random
import time
import uuid
import zlib
from collections.abc import Callable

import torch

from flowdpo.flow.backend import GenerationBackend
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import mine_pairs, rollout_examples
from flowdpo.run.prepare import read_shard
from flowdpo.spec import RunSpec
from flowdpo.storage import ObjectStore, RunLayout


def shard_seed(seed: int, shard: int) -> int:
    return zlib.crc32(f"{seed}:{shard}".encode())


class ShardRollout:
    def __init__(self, backend: GenerationBackend, prompts: PromptBuilder, spec: RunSpec, store: ObjectStore, run: str):
        self.backend, self.prompts, self.spec, self.store, self.run = backend, prompts, spec, store, run

    def rollout_shard(self, shard: int, on_example=None, on_step=None) -> tuple[list[dict], list[dict]]:
        """Outcomes and pairs of one shard (nothing written). `on_example(record)` gets each example's
        outcome record as soon as its flows have ended, `on_step()` is called after every engine step."""
        examples = read_shard(self.store, shard)
        seed = shard_seed(self.spec.seed, shard)
        if chains_capable(self.backend):  # vLLM: independent request chains, `rollout.inFlight` at once
            from flowdpo.flow.chains import ListSource, run_chains

            mined: dict[str, tuple[dict, list[dict]]] = {}
            work = [self.chain_work(ex, shard, seed, mined, on_example) for ex in examples]
            run_chains(ListSource(work), self.backend, self.prompts, self.spec.flow, self.spec.baselines,
                       self.spec.rollout.in_flight, on_step=on_step)  # fmt: skip
            return self.in_order(examples, mined)
        rng = random.Random(seed)
        torch.manual_seed(seed)  # sampling in the in-process backend: a redone shard samples the same
        self.backend.reset()  # ... and computes from the same (empty) KV cache as the first attempt did
        results: list[dict] = []
        pairs: list[dict] = []
        step = self.spec.rollout.batch_examples
        for i in range(0, len(examples), step):
            batch = examples[i : i + step]
            lineage = {"run": self.run, "shard": shard, "adapterVersions": self.backend.versions()}
            mined = {}

            def done(r, lineage=lineage, mined=mined):
                mined[r.example.id] = mine_pairs(r, self.prompts, lineage, self.spec.training.max_pairs_per_example)
                if on_example is not None:
                    on_example(*mined[r.example.id])

            rs = rollout_examples(
                batch, self.backend, self.prompts, self.spec.flow, rng, self.spec.baselines, on_done=done, on_step=on_step
            )
            for r in rs:  # in shard order, whatever order they finished in
                if r.example.id not in mined:
                    done(r)
                res, prs = mined[r.example.id]
                results.append(res)
                pairs.extend(prs)
        self.backend.reset()  # the cached keys/values are of no use to the next shard: free them for training
        return results, pairs

    def chain_work(self, example, shard: int, seed: int, mined: dict, on_example=None, then=None):
        """One example of `shard` for `run_chains`: its outcome and pairs go into `mined[example.id]` with
        the lineage of the versions its chains ran on; then `on_example(result, pairs)` and `then()`."""
        from flowdpo.flow.chains import ChainWork

        def done(r, versions):
            lineage = {"run": self.run, "shard": shard, "adapterVersions": versions}
            mined[example.id] = mine_pairs(r, self.prompts, lineage, self.spec.training.max_pairs_per_example)
            if on_example is not None:
                on_example(*mined[example.id])
            if then is not None:
                then()

        return ChainWork(example, seed, done)

    @staticmethod
    def in_order(examples, mined: dict) -> tuple[list[dict], list[dict]]:
        """(results, pairs) in shard order, whatever order the examples finished in."""
        results, pairs = [], []
        for ex in examples:
            res, prs = mined[ex.id]
            results.append(res)
            pairs.extend(prs)
        return results, pairs

    def process_shard(self, shard: int, on_example=None, on_step=None) -> bool:
        """Roll out and write a shard. False if another attempt's result already exists."""
        if self.store.exists(RunLayout.results(shard)):
            return False
        results, pairs = self.rollout_shard(shard, on_example, on_step)
        return self.write_shard(shard, results, pairs)

    def write_shard(self, shard: int, results: list[dict], pairs: list[dict]) -> bool:
        """Pairs first, under this attempt's own key; then the results object, the shard's completion
        marker, names the attempt. Pairs of attempts that lost (or died) are never read. False if another
        attempt's result already exists."""
        attempt = uuid.uuid4().hex[:12]
        for r in results:
            r["attempt"] = attempt
        self.store.create_jsonl(RunLayout.pairs(shard, attempt), pairs)
        return self.store.create_jsonl(RunLayout.results(shard), results)


def chains_capable(backend) -> bool:
    """Does `backend` run flows as independent request chains (`pin()`: the vLLM backend)?"""
    return callable(getattr(backend, "pin", None))


class LiveProgress:
    """Live progress of the rollouts in this process, as each example finishes and after every engine step:
    the worker-side metrics (examples rolled out, rollouts, tokens) and any `listeners` (a progress bar,
    progress.json). Pass `example`/`step` to `ShardRollout.process_shard`."""

    def __init__(self, metrics, backend, listeners: tuple[Callable[[], None], ...] = ()):
        """`backend` may be None (a worker with no shard left loads no model): nothing is counted."""
        self.metrics, self.backend, self.listeners = metrics, backend, list(listeners)
        self._seen_tokens = backend.tokens_generated if backend is not None else 0
        self.started = time.monotonic()
        self.examples = 0  # examples finished in this process
        self.tokens = 0  # tokens generated in this process
        self.rollout_seconds = 0.0  # time spent rolling out shards (not loading, training or waiting)
        self._shard_started: float | None = None

    def begin_shard(self) -> None:
        self._shard_started = time.monotonic()

    def end_shard(self) -> None:
        if self._shard_started is not None:
            self.rollout_seconds += time.monotonic() - self._shard_started
            self._shard_started = None

    def example(self, result: dict, pairs: list[dict]) -> None:
        self.examples += 1
        self.metrics.observe_example(result)
        self.step()

    def step(self) -> None:
        now = self.backend.tokens_generated if self.backend is not None else 0
        self.metrics.observe_tokens(now - self._seen_tokens)
        self.tokens += now - self._seen_tokens
        self._seen_tokens = now
        for listener in self.listeners:
            listener()

    @property
    def busy_seconds(self) -> float:
        """Seconds spent rolling out so far, the running shard included."""
        busy = self.rollout_seconds
        if self._shard_started is not None:
            busy += time.monotonic() - self._shard_started
        return busy

    @property
    def tokens_per_second(self) -> float | None:
        """Generated tokens per second of rollout time (model loading and training excluded)."""
        busy = self.busy_seconds
        return self.tokens / busy if busy > 0 and self.tokens else None


def release_free_memory() -> None:
    """Hand memory the allocator holds but no longer uses back to the system (glibc's malloc_trim), so the
    rollouts' freed buffers and the training step's do not add up in the process's resident set."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
