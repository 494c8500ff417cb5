"""The one place that knows the object-store key layout of a run (relative to the run prefix).

```
spec.yaml                          the resolved FlowDPORun document
examples/shard-000123.jsonl        prepared examples (id, question, gold answer, solution)
examples/MANIFEST.json             number of shards and examples, written last by `prepare`
claims/shard-000123/attempt-0001.json  a worker's claim of a shard (atomic create; the highest attempt owns it)
claims/shard-000123/lease-0001.json    lease of attempt 1: expiry, renewed (overwritten) by its owner only
writer/attempt-0001.json           the trainer's (or `flowdpo run`'s) claim of the whole run: one writer at a time
writer/lease-0001.json             its lease (same protocol as a shard's)
results/shard-000123.jsonl         per-example outcomes (atomic create: the first finished attempt wins)
pairs/shard-000123/<attempt>.jsonl mined DPO pairs with lineage; written before results, which name the attempt
trainer/state/LATEST.json          pointer to the newest trainer checkpoint
trainer/state/000012.json          after 12 shards: consumed shards, pending pairs, counters, versions
trainer/optim/answer/v000017.pt    Adam state of an adapter version (resume continues the same optimizer)
adapters/answer/v000017/           peft adapter folder (adapter_config.json, adapter_model.safetensors)
adapters/answer/v000017/canary.json  the trainer's expected next-token log-probs of that version (canary)
adapters/LATEST.json               {"answer": 17, "stop": 12}: current versions (written after the folders)
checks/adapters/<worker>.json      a worker's last adapter-arrival check of its server (canary deviation)
progress.json                      examples, correct, progressive accuracy, pairs, versions, ETA
report/                            progress.png, report.md (flowdpo report)
compile/questions.jsonl            the compile set (Example records; flowdpo compile)
compile/PLAN.json                  what the candidates depend on (settings, adapter versions); created once
compile/candidates/<source>/part-000003.jsonl  every attempt of one batch of compile questions, graded
compile/traces/<source>.jsonl      the kept traces of a source (equal-data selection) with provenance
compile/MANIFEST.json              the selection: questions, counts per source, rule, provenance (written last)
compile/sft/<source>/              peft folder of the SFT adapter trained on that source's traces
compile/sft/<source>.json          its training log (hyperparameters, steps, losses, seconds)
compile/sft/<source>.checkpoint/   an unfinished SFT's latest checkpoint (LATEST.json -> step-000004/: adapter,
                                   optimizer, scheduler, RNG states): a rerun resumes there; removed once done
compile/judge/<a>__vs__<b>.json    pairwise judge verdicts and win rates of two sources (flowdpo judge)
eval/outcomes/<row>/<set>.jsonl    per-question outcomes of one table row on one eval set (flowdpo eval)
eval/table.json, eval/table.md     the compile table: accuracy, 95% Wilson CI and n per row and eval set
eval/partial/<row>.json            an unfinished row's answers and random state (a rerun resumes there; removed once stored)
eval/stop-discrimination.json      AUC of the Stop decision, untrained vs trained, on the same held-out partial answers
signal/<key>/lengths.json          natural answer lengths of the base model (flowdpo signal; <key>: its settings)
signal/<key>/mined/batch-000003.jsonl  outcomes and pairs the untrained flow mined from one batch of questions
signal/<key>/fits/<adapter>-lr<lr>.json  offline DPO on 80% of the pairs: held-out pair accuracy per epoch
signal/<key>/report.json           the signal check's summary (flowdpo signal)
```
<source> is one of COMPILE_SOURCES (ground-truth, self-generated, flow-generated); <row> is zero-shot or
sft-<source>.
All objects are immutable except the LATEST pointers, progress.json, the adapter checks and the claim leases, which are
overwritten whole (a lease only by the worker that created its attempt). The claim protocol is in
`flowdpo.run.claims`; a shard is done when its results object exists.
"""

from __future__ import annotations

import re

from flowdpo.names import ADAPTERS, COMPILE_SOURCES

_SHARD_RE = re.compile(r"shard-(\d{6})\.")
_CLAIM_RE = re.compile(r"^claims/shard-(\d{6})/(attempt|lease)-(\d{4,})\.json$")
_WRITER_CLAIM_RE = re.compile(r"^writer/(attempt|lease)-(\d{4,})\.json$")
_STATE_RE = re.compile(r"^trainer/state/(\d{6})(-final)?\.json$")
_SEGMENT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # a user-chosen part of a key: one path segment


class RunLayout:
    spec = "spec.yaml"
    manifest = "examples/MANIFEST.json"
    progress = "progress.json"
    adapters_latest = "adapters/LATEST.json"
    trainer_latest = "trainer/state/LATEST.json"
    adapter_checks_root = "checks/adapters/"

    @classmethod
    def adapter_check(cls, worker: str) -> str:
        """A worker's last adapter-arrival check (any worker id: characters outside [A-Za-z0-9_.-] become -)."""
        return cls.adapter_checks_root + re.sub(r"[^A-Za-z0-9_.-]", "-", worker)[:200] + ".json"
    report_dir = "report"

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:06d}"

    @classmethod
    def examples(cls, shard: int) -> str:
        return f"examples/{cls.shard_name(shard)}.jsonl"

    claims_root = "claims/"
    results_root = "results/"

    @classmethod
    def claim_prefix(cls, shard: int) -> str:
        return f"claims/{cls.shard_name(shard)}/"

    @classmethod
    def claim_attempt(cls, shard: int, attempt: int) -> str:
        """Attempt `attempt` (1, 2, ...) at owning a shard: created once, never changed."""
        return f"{cls.claim_prefix(shard)}attempt-{attempt:04d}.json"

    @classmethod
    def claim_lease(cls, shard: int, attempt: int) -> str:
        """The lease of one attempt: written only by the worker that created that attempt."""
        return f"{cls.claim_prefix(shard)}lease-{attempt:04d}.json"

    @staticmethod
    def parse_claim(key: str) -> tuple[int, str, int] | None:
        """(shard, "attempt"|"lease", attempt number) of a claims/ key; None for other keys."""
        m = _CLAIM_RE.match(key)
        return (int(m.group(1)), m.group(2), int(m.group(3))) if m else None

    writer_claims = "writer/"

    @classmethod
    def writer_attempt(cls, attempt: int) -> str:
        """Attempt `attempt` at being the run's one writer (trainer or `flowdpo run`): created once."""
        return f"{cls.writer_claims}attempt-{attempt:04d}.json"

    @classmethod
    def writer_lease(cls, attempt: int) -> str:
        return f"{cls.writer_claims}lease-{attempt:04d}.json"

    @staticmethod
    def parse_writer_claim(key: str) -> tuple[int, str, int] | None:
        """(0, "attempt"|"lease", attempt number) of a writer/ key; None for other keys."""
        m = _WRITER_CLAIM_RE.match(key)
        return (0, m.group(1), int(m.group(2))) if m else None

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
    def consumed_of_state(key: str) -> int:
        """Shards consumed by the trainer checkpoint `key` (as named by `trainer_state`)."""
        m = _STATE_RE.match(key)
        if not m:
            raise ValueError(f"not a trainer state key: {key!r}")
        return int(m.group(1))

    @staticmethod
    def optimizer_prefix(name: str) -> str:
        return f"trainer/optim/{name}/"

    @classmethod
    def optimizer(cls, name: str, version: int) -> str:
        """Adam state of an adapter as published at `version` (torch.save)."""
        return f"{cls.optimizer_prefix(name)}v{version:06d}.pt"

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

    # -- compile and eval (flowdpo compile / flowdpo eval) ----------------------------------------------
    compile_questions = "compile/questions.jsonl"
    compile_plan = "compile/PLAN.json"
    compile_manifest = "compile/MANIFEST.json"
    eval_table_json = "eval/table.json"
    eval_stop = "eval/stop-discrimination.json"
    eval_table_md = "eval/table.md"

    @staticmethod
    def _source(source: str) -> str:
        if source not in COMPILE_SOURCES:
            raise ValueError(f"unknown trace source {source!r}; expected one of {COMPILE_SOURCES}")
        return source

    @classmethod
    def compile_candidates_prefix(cls, source: str) -> str:
        return f"compile/candidates/{cls._source(source)}/"

    @classmethod
    def compile_candidates(cls, source: str, part: int) -> str:
        """Every attempt (graded) of the `part`-th batch of compile questions from one source."""
        return f"{cls.compile_candidates_prefix(source)}part-{part:06d}.jsonl"

    @classmethod
    def compile_traces(cls, source: str) -> str:
        """The kept traces of a source after the equal-data selection."""
        return f"compile/traces/{cls._source(source)}.jsonl"

    @classmethod
    def sft_adapter(cls, source: str) -> str:
        """peft folder of the model SFT-trained on `source`'s traces."""
        return f"compile/sft/{cls._source(source)}"

    @classmethod
    def sft_checkpoint(cls, source: str) -> str:
        """Prefix of an unfinished SFT's checkpoint (LATEST.json and step-NNNNNN/ below it)."""
        return f"compile/sft/{cls._source(source)}.checkpoint"

    @classmethod
    def sft_log(cls, source: str) -> str:
        return f"compile/sft/{cls._source(source)}.json"

    @classmethod
    def compile_judge(cls, a: str, b: str) -> str:
        """Verdicts of the pairwise judge of source `a` against source `b`."""
        return f"compile/judge/{cls._source(a)}__vs__{cls._source(b)}.json"

    @staticmethod
    def _segment(part: str, what: str) -> str:
        """`part` as one path segment of a key: lowercase letters, digits, '_', '.', '-' (no '/', no '..')."""
        if not _SEGMENT_RE.match(part):
            raise ValueError(f"not a valid {what}: {part!r}")
        return part

    @classmethod
    def eval_outcomes(cls, row: str, set_id: str) -> str:
        for part in (row, set_id):
            cls._segment(part, "eval row / set id")
        return f"eval/outcomes/{row}/{set_id}.jsonl"

    @classmethod
    def eval_partial(cls, row: str) -> str:
        """An eval row's answers so far and the random state after them (`flowdpo eval` resumes from it)."""
        cls._segment(row, "eval row")
        return f"eval/partial/{row}.json"

    # -- the signal check (flowdpo signal) ------------------------------------------------------------
    @classmethod
    def _signal_key(cls, key: str) -> str:
        return f"signal/{cls._segment(key, 'signal-check key')}"

    @classmethod
    def signal_lengths(cls, key: str) -> str:
        return f"{cls._signal_key(key)}/lengths.json"

    @classmethod
    def signal_mined(cls, key: str, batch: int) -> str:
        return f"{cls._signal_key(key)}/mined/batch-{batch:06d}.jsonl"

    @classmethod
    def signal_fit(cls, key: str, adapter: str, lr: float) -> str:
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {adapter!r}")
        return f"{cls._signal_key(key)}/fits/{adapter}-lr{lr:.3g}.json"

    @classmethod
    def signal_report(cls, key: str) -> str:
        return f"{cls._signal_key(key)}/report.json"
