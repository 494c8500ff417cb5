"""The one place that knows the object-store key layout of a run (relative to the run prefix).

```
spec.yaml                          the resolved FlowDPORun document
examples/shard-000123.jsonl        prepared examples (id, question, gold answer, solution)
examples/MANIFEST.json             number of shards and examples, written last by `prepare`
claims/shard-000123.json           who processes a shard (atomic create; cluster workers)
results/shard-000123.jsonl         per-example outcomes (atomic create: the first finished attempt wins)
pairs/shard-000123/<attempt>.jsonl mined DPO pairs with lineage; written before results, which name the attempt
trainer/state/LATEST.json          pointer to the newest trainer checkpoint
trainer/state/000012.json          after 12 shards: consumed shards, pending pairs, counters, versions
trainer/optim/answer/v000017.pt    Adam state of an adapter version (resume continues the same optimizer)
adapters/answer/v000017/           peft adapter folder (adapter_config.json, adapter_model.safetensors)
adapters/LATEST.json               {"answer": 17, "stop": 12}: current versions (written after the folders)
progress.json                      examples, correct, progressive accuracy, pairs, versions, ETA
report/                            progress.png, report.md (flowdpo report)
```
All objects are immutable except the LATEST pointers and progress.json, which are overwritten whole.
"""

from __future__ import annotations

import re

ADAPTERS = ("answer", "stop")
_SHARD_RE = re.compile(r"shard-(\d{6})\.")


class RunLayout:
    spec = "spec.yaml"
    manifest = "examples/MANIFEST.json"
    progress = "progress.json"
    adapters_latest = "adapters/LATEST.json"
    trainer_latest = "trainer/state/LATEST.json"
    report_dir = "report"

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:06d}"

    @classmethod
    def examples(cls, shard: int) -> str:
        return f"examples/{cls.shard_name(shard)}.jsonl"

    @classmethod
    def claim(cls, shard: int) -> str:
        return f"claims/{cls.shard_name(shard)}.json"

    @classmethod
    def results(cls, shard: int) -> str:
        return f"results/{cls.shard_name(shard)}.jsonl"

    @classmethod
    def pairs(cls, shard: int, attempt: str) -> str:
        """Pairs of one attempt at a shard; the shard's results object names the attempt that won."""
        return f"pairs/{cls.shard_name(shard)}/{attempt}.jsonl"

    @staticmethod
    def trainer_state(consumed: int, final: bool = False) -> str:
        """Trainer checkpoint after `consumed` shards (JSON: counters, pending pairs, versions)."""
        return f"trainer/state/{consumed:06d}{'-final' if final else ''}.json"

    @staticmethod
    def optimizer(name: str, version: int) -> str:
        """Adam state of an adapter as published at `version` (torch.save)."""
        return f"trainer/optim/{name}/v{version:06d}.pt"

    @staticmethod
    def adapter(name: str, version: int) -> str:
        if name not in ADAPTERS:
            raise ValueError(f"unknown adapter {name!r}; expected one of {ADAPTERS}")
        return f"adapters/{name}/v{version:06d}"

    @staticmethod
    def adapter_versions_prefix(name: str) -> str:
        return f"adapters/{name}/"

    @staticmethod
    def shard_index(key: str) -> int:
        m = _SHARD_RE.search(key)
        if not m:
            raise ValueError(f"not a shard key: {key!r}")
        return int(m.group(1))

    @staticmethod
    def version_of(key: str) -> int:
        m = re.search(r"/v(\d{6})/", key)
        if not m:
            raise ValueError(f"not an adapter key: {key!r}")
        return int(m.group(1))
