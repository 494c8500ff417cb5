"""The rollout worker: runs the flow with rollouts on a shard of examples and writes its outcomes and
mined pairs as whole objects (results/ and pairs/). The first completed result of a shard wins
(atomic create), so a shard redone after a crash is never counted twice.
"""

from __future__ import annotations

import random
import uuid
import zlib

import torch

from flowdpo.flow.backend import GenerationBackend
from flowdpo.flow.prompts import PromptBuilder
from flowdpo.flow.rollouts import mine_pairs, rollout_examples
from flowdpo.prepare import read_shard
from flowdpo.spec import RunSpec
from flowdpo.storage import ObjectStore, RunLayout


def shard_seed(seed: int, shard: int) -> int:
    return zlib.crc32(f"{seed}:{shard}".encode())


class RolloutWorker:
    def __init__(self, backend: GenerationBackend, prompts: PromptBuilder, spec: RunSpec, store: ObjectStore, run: str):
        self.backend, self.prompts, self.spec, self.store, self.run = backend, prompts, spec, store, run

    def rollout_shard(self, shard: int) -> tuple[list[dict], list[dict]]:
        """Outcomes and pairs of one shard (nothing written)."""
        examples = read_shard(self.store, shard)
        seed = shard_seed(self.spec.seed, shard)
        rng = random.Random(seed)
        torch.manual_seed(seed)  # sampling in the in-process backend: a redone shard samples the same
        reset = getattr(self.backend, "reset", None)
        if reset is not None:
            reset()  # ... and computes from the same (empty) KV cache as the first attempt did
        results: list[dict] = []
        pairs: list[dict] = []
        step = self.spec.rollout.batch_examples
        for i in range(0, len(examples), step):
            batch = examples[i : i + step]
            lineage = {"run": self.run, "shard": shard, "adapterVersions": self.backend.versions()}
            for r in rollout_examples(batch, self.backend, self.prompts, self.spec.flow, rng, self.spec.baselines):
                res, prs = mine_pairs(r, self.prompts, lineage, self.spec.training.max_pairs_per_example)
                results.append(res)
                pairs.extend(prs)
        return results, pairs

    def process_shard(self, shard: int) -> bool:
        """Roll out and write a shard. False if another attempt's result already exists."""
        if self.store.exists(RunLayout.results(shard)):
            return False
        results, pairs = self.rollout_shard(shard)
        # Pairs first, under this attempt's own key; then the results object, the shard's completion
        # marker, names the attempt. Pairs of attempts that lost (or died) are never read.
        attempt = uuid.uuid4().hex[:12]
        for r in results:
            r["attempt"] = attempt
        self.store.create_jsonl(RunLayout.pairs(shard, attempt), pairs)
        return self.store.create_jsonl(RunLayout.results(shard), results)
