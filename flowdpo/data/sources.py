"""Examples from GSM8K, MATH, MetaMathQA (hub or local copies) and from generic jsonl/parquet files.

Schemas (the hub datasets' own column names):
  gsm8k       question, answer    - answer text ends with "#### N" (N may be written "1,234")
  math        problem, solution   - final answer in the last \\boxed{...} / \\fbox{...}
  metamathqa  query, response     - response ends with "The answer is: X"

Hub defaults (source with no path): gsm8k -> "openai/gsm8k" config "main"; math ->
"EleutherAI/hendrycks_math", all seven subject configs concatenated unless `hubConfig` names one (it
has no single all-subjects config); metamathqa -> "meta-math/MetaMathQA" (train split only).
`path` may name another hub dataset or a local file/folder (an existing path is local).

A .json file may also hold one JSON array of rows, or one object whose values are row collections
(arrays, or objects keyed by row id, as in the CHAMP dataset's v0.json).

Local folders: every *.jsonl / *.parquet below them; when file or folder names carry split names
(train.jsonl, test-00000.parquet, test/...), only the requested split's files are read.

A numeric answer field (`"answer": 42`) is the final answer itself, in every schema. A UTF-8 byte-order mark is
ignored. Rows that cannot be used (missing/non-string/empty field, no final answer, malformed JSON line) are
skipped and counted in the LoadReport. Ids keep the row's position in the source ("gsm8k-train-000123")
so they are stable however many rows were skipped; rows are then shuffled with `data.seed` (MetaMathQA
is ordered by augmentation type, MATH by subject, so a prefix would be a biased sample).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowdpo.data.answers import clean_gsm8k_solution, gsm8k_final, math_final, metamath_final
from flowdpo.data.types import Example, LoadReport, Skip

if TYPE_CHECKING:
    from flowdpo.spec import DataSpec

HUB_DEFAULTS: dict[str, tuple[str, str | None]] = {
    "gsm8k": ("openai/gsm8k", "main"),
    "math": ("EleutherAI/hendrycks_math", None),
    "metamathqa": ("meta-math/MetaMathQA", None),
}
HENDRYCKS_MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
_SPLIT_NAMES = ("train", "test", "validation", "valid", "dev")
_FILE_SUFFIXES = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}


@dataclass(frozen=True)
class Schema:
    """Where a schema keeps the question and answer, and how the final answer is found in the latter."""

    name: str
    question_field: str
    answer_field: str
    final: Callable[[str], str | None]
    solution: Callable[[str], str | None]
    no_answer: str  # skip reason when `final` finds nothing


SCHEMAS: dict[str, Schema] = {
    "gsm8k": Schema(
        "gsm8k", "question", "answer", gsm8k_final, clean_gsm8k_solution, "no final answer (#### N) in answer"
    ),
    "math": Schema(
        "math",
        "problem",
        "solution",
        math_final,
        lambda s: s.strip(),
        "no final answer (\\boxed{...}) in solution",
    ),
    "metamathqa": Schema(
        "metamathqa",
        "query",
        "response",
        metamath_final,
        lambda s: s.strip(),
        "no final answer (The answer is: X) in response",
    ),
}


def generic_final(text: str) -> str | None:
    """Final answer of a free-form answer column: any of the three conventions, else the text itself when
    it is a bare answer ("13", "\\frac{1}{2}") rather than a sentence."""
    for final in (gsm8k_final, math_final, metamath_final):
        got = final(text)
        if got:
            return got
    short = text.strip().rstrip(".").strip()
    if short and len(short) <= 32 and len(short.split()) <= 3:  # a bare answer, not a sentence
        return short
    return None


def _generic_solution(text: str) -> str | None:
    """The answer field is a worked solution when it is more than the bare final answer."""
    t = text.strip()
    if "####" in t:
        return clean_gsm8k_solution(t)
    return None if len(t) <= 32 and len(t.split()) <= 3 else t


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or path.endswith((".jsonl", ".json", ".parquet"))


def _split_of(rel: Path) -> str | None:
    """The split a file belongs to by its name or a parent folder's name (None if unsplit)."""
    for part in rel.parts[:-1]:
        if part.lower() in _SPLIT_NAMES:
            return part.lower()
    stem = rel.name.split(".")[0].lower()
    for split in _SPLIT_NAMES:
        if stem == split or re.match(rf"^{split}[-_]", stem):
            return split
    return None


def local_files(path: str, kinds: tuple[str, ...], split: str | None) -> list[Path]:
    """The data files under a local file or folder for a split (None = single-file sources ignore split).

    Raises FileNotFoundError naming the path when nothing usable is there.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data.path {path!r}: no such file or folder")
    suffixes = tuple(s for k in kinds for s in _FILE_SUFFIXES[k])
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
    if not files:
        raise FileNotFoundError(
            f"data.path {path!r}: folder has no {'/'.join('*' + s for s in suffixes)} files"
        )
    splits = {f: _split_of(f.relative_to(p)) for f in files}
    if split is None or not any(splits.values()):
        return files
    chosen = [f for f in files if splits[f] == split]
    if not chosen:
        found = sorted({s for s in splits.values() if s})
        raise FileNotFoundError(f"data.path {path!r}: no files for split {split!r} (found splits: {found})")
    return chosen


def _file_kind(f: Path, default: str) -> str:
    if f.name.endswith(".parquet"):
        return "parquet"
    if f.name.endswith((".jsonl", ".json")):
        return "jsonl"
    return default


def _json_object_rows(doc: dict[str, Any]) -> list[dict[str, Any] | str] | None:
    """The rows of a JSON object that holds row collections instead of being a row itself (only lists
    and objects as values, e.g. {"problems": {"P_1": {...}, ...}, "hints": [...]}); None for a row."""
    if not doc or any(not isinstance(v, (list, dict)) for v in doc.values()):
        return None
    rows: list[dict[str, Any] | str] = []
    for v in doc.values():
        for row in v if isinstance(v, list) else v.values():
            rows.append(row if isinstance(row, dict) else "row is not a JSON object")
    return rows


# Bounds on data rows: a row over these is skipped and counted (a run's questions are prompts; its golds are
# final answers, compared by the grader).
MAX_ROW_CHARS = 1_000_000
MAX_QUESTION_CHARS = 20_000
MAX_GOLD_CHARS = 200
NON_FINITE = frozenset({"nan", "inf", "infinity", "\\infty", "∞"})


def _jsonl_rows(f: Path) -> Iterator[dict[str, Any] | str]:
    raw = f.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (editors on Windows write one)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # one bad line must not reject the file: read it line by line, skipping those
        for i, line in enumerate(raw.split(b"\n"), 1):
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError:
                yield Skip("line is not UTF-8 text", f"{f.name}:{i}")
                continue
            yield from _json_line_rows(decoded, f"{f.name}:{i}")
        return
    if f.name.endswith(".json") and text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = None  # JSON lines in a .json file: read below
        if isinstance(doc, dict):
            yield from _json_object_rows(doc) or [doc]
            return
    if f.name.endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            yield Skip("malformed JSON file", f.name)
            return
        if not isinstance(rows, list):
            yield Skip("malformed JSON file", f.name)
            return
        for i, row in enumerate(rows):
            yield row if isinstance(row, dict) else Skip("row is not a JSON object", f"{f.name}[{i}]")
        return
    for i, line in enumerate(text.split("\n"), 1):  # "\n" only: a JSON string may hold other line breaks
        yield from _json_line_rows(line, f"{f.name}:{i}")


def _json_line_rows(line: str, where: str) -> Iterator[dict[str, Any] | str]:
    line = line.removeprefix("\ufeff")  # a byte-order mark where files were concatenated
    if not line.strip():
        return
    if len(line) > MAX_ROW_CHARS:
        yield Skip(f"row longer than {MAX_ROW_CHARS:,} characters", where)
        return
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, and an integer over Python's digit limit
        yield Skip("malformed JSON line", where)
        return
    yield row if isinstance(row, dict) else Skip("row is not a JSON object", where)


def _parquet_rows(f: Path) -> Iterator[dict[str, Any] | str]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _local_rows(files: list[Path], default_kind: str) -> Iterator[dict[str, Any] | str]:
    for f in files:
        reader = _parquet_rows if _file_kind(f, default_kind) == "parquet" else _jsonl_rows
        try:
            yield from reader(f)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"data.path: cannot read {f}: {e}") from e


def _hub_rows(name: str, config: str | None, split: str) -> Iterator[dict[str, Any]]:
    """Rows of a hub dataset (datasets.load_dataset); errors name the dataset, config and split."""
    import datasets

    configs: list[str | None] = [config]
    if name == HUB_DEFAULTS["math"][0] and config is None:
        configs = list(HENDRYCKS_MATH_SUBJECTS)
    for cfg in configs:
        try:
            ds = datasets.load_dataset(name, cfg, split=split)
        except Exception as e:
            raise RuntimeError(
                f"cannot load hub dataset {name!r} (config {cfg!r}, split {split!r}): {e}"
            ) from e
        yield from ds


def _detect_schema(rows: list[dict[str, Any] | str], where: str) -> Schema:
    keys: set[str] = set()
    for row in rows[:200]:
        if isinstance(row, dict):
            keys.update(row)
    for schema in SCHEMAS.values():
        if {schema.question_field, schema.answer_field} <= keys:
            return schema
    if not keys:
        bad = LoadReport()
        for row in rows:
            if isinstance(row, str):
                bad.skip(row, where=getattr(row, "where", None))
        if not bad.skipped:
            raise ValueError(f"{where}: no rows (the file or folder holds no JSON object / parquet row)")
        raise ValueError(f"{where}: no readable rows ({bad.reasons()}); expected one JSON object per line")
    raise ValueError(
        f"{where}: cannot detect the schema from columns {sorted(keys)}; expected question/answer "
        "(GSM8K), problem/solution (MATH) or query/response (MetaMathQA), or set data.questionField "
        "and data.answerField"
    )


def _source_name(spec: DataSpec) -> str:
    if spec.source in SCHEMAS:
        return spec.source
    p = Path(spec.path or spec.source).expanduser()
    stem = p.name.split(".")[0] if p.is_file() or p.suffix else p.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or spec.source


def _to_example(
    row: dict[str, Any],
    qf: str,
    af: str,
    final: Callable[[str], str | None],
    solution: Callable[[str], str | None],
    no_answer: str,
    ex_id: str,
    source: str,
) -> Example | str:
    """An Example, or the reason the row is skipped."""
    for f in (qf, af):
        if f not in row or row[f] is None:
            return f"missing field {f!r}"
    question, answer = row[qf], row[af]
    numeric = isinstance(answer, (int, float)) and not isinstance(answer, bool)
    if numeric:
        if not math.isfinite(answer):
            return "non-finite gold answer"
        answer = str(answer)  # a bare numeric answer column is the final answer itself (no worked solution)
    for f, v in ((qf, question), (af, answer)):
        if not isinstance(v, str):
            return f"non-string field {f!r}"
        if not v.strip():
            return f"empty field {f!r}"
    if len(question) > MAX_QUESTION_CHARS:
        return f"question longer than {MAX_QUESTION_CHARS:,} characters"
    gold = answer if numeric else final(answer)
    if not gold:
        return no_answer
    if len(gold) > MAX_GOLD_CHARS:
        return f"gold answer longer than {MAX_GOLD_CHARS} characters"
    if gold.strip().lower().lstrip("+-") in NON_FINITE:
        return "non-finite gold answer"
    return Example(ex_id, question.strip(), gold, source, None if numeric else solution(answer))


def load_source_examples(
    spec: DataSpec, split: str | None = None, limit: int | None = None, offset: int = 0
) -> tuple[list[Example], LoadReport]:
    """Load, validate and seed-shuffle one split of a hub or file source; return [offset, offset + limit)."""
    split = split or spec.split
    path = spec.path
    local = spec.source in ("jsonl", "parquet") or (
        path is not None and (os.path.exists(os.path.expanduser(path)) or _looks_local(path))
    )
    if local:
        assert path is not None
        kinds = (spec.source,) if spec.source in ("jsonl", "parquet") else ("jsonl", "parquet")
        files = local_files(path, kinds, split)
        rows: list[dict[str, Any] | str] = list(_local_rows(files, kinds[0]))
        where = f"data.path {path!r}"
    else:
        name, default_cfg = HUB_DEFAULTS[spec.source]
        if path:
            name, default_cfg = path, None
        rows = list(_hub_rows(name, spec.hub_config or default_cfg, split))
        where = f"hub dataset {name!r}"

    # A named source fixes the schema; jsonl/parquet detect it from the columns. Explicit fields on a
    # jsonl/parquet source mean a free-form answer column, read by `generic_final`.
    if spec.source in SCHEMAS:
        schema: Schema | None = SCHEMAS[spec.source]
    elif spec.question_field and spec.answer_field:
        schema = None
    else:
        schema = _detect_schema(rows, where)
    if schema is None:
        qf, af = spec.question_field or "", spec.answer_field or ""
        final, solution = generic_final, _generic_solution
        no_answer = f"no final answer in {spec.answer_field!r}"
    else:
        qf = spec.question_field or schema.question_field
        af = spec.answer_field or schema.answer_field
        final, solution, no_answer = schema.final, schema.solution, schema.no_answer

    source = _source_name(spec)
    report = LoadReport()
    good: list[Example] = []
    for idx, row in enumerate(rows):
        if isinstance(row, str):
            report.skip(row, where=getattr(row, "where", None))
            continue
        ex_id = f"{source}-{split}-{idx:06d}"
        got = _to_example(row, qf, af, final, solution, no_answer, ex_id, source)
        if isinstance(got, str):
            report.skip(got, where=f"row {idx + 1} ({ex_id})")
        else:
            good.append(got)
    random.Random(spec.seed).shuffle(good)
    window = good[offset:] if limit is None else good[offset : offset + limit]
    report.loaded = len(window)
    return window, report


def load_source_heldout(spec: DataSpec, n: int) -> list[Example]:
    """n examples from the source's "test" split (never the training split)."""
    if spec.split == "test":
        raise ValueError("data.split is already 'test': there is no separate split to hold out")
    path = spec.path
    if spec.source == "metamathqa" and (path is None or path == HUB_DEFAULTS["metamathqa"][0]):
        raise ValueError("MetaMathQA has only a train split; hold out with source gsm8k or math instead")
    if path is not None and os.path.exists(os.path.expanduser(path)):
        p = Path(path).expanduser()
        kinds = (spec.source,) if spec.source in ("jsonl", "parquet") else ("jsonl", "parquet")
        if p.is_file() or not any(
            _split_of(f.relative_to(p)) == "test" for f in local_files(path, kinds, None)
        ):
            raise ValueError(
                f"data.path {path!r} has no 'test' split (a folder with test.jsonl / test-*.parquet / "
                "test/ is needed) to hold out from"
            )
    examples, _ = load_source_examples(spec, split="test", limit=n)
    if len(examples) < n:
        raise ValueError(f"the 'test' split has only {len(examples)} usable examples, {n} requested")
    return examples
