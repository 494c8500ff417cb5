"""Bad and hostile input, class by class: each is refused early by `flowdpo validate` / `run` / `prepare` /
`status` and by the operator's validation, with a non-zero exit, a message naming the field or the stored
object, no traceback, nothing written outside the run folder and nothing lost."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from flowdpo.spec import load_document, quickstart_path
from flowdpo.spec.yaml_file import RunFileError, load_run_yaml
from flowdpo.storage import RunLayout, open_store
from flowdpo_operator.validation import validate

QUICKSTART = yaml.safe_load(quickstart_path().read_text())


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The real command line in a subprocess (what a user sees, tracebacks included)."""
    return subprocess.run(
        [sys.executable, "-m", "flowdpo.cli.main", *args],
        check=False, capture_output=True, text=True, cwd=cwd, timeout=300,
    )


def refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])


def patched(spec: dict, patch: dict | None) -> dict:
    """A copy of `spec` with `patch` merged in, section by section at every depth (a non-mapping value
    replaces the field)."""
    out = copy.deepcopy(spec)
    for key, value in (patch or {}).items():
        out[key] = patched(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run_file(tmp_path, patch: dict | None = None, raw: bytes | None = None):
    doc = copy.deepcopy(QUICKSTART)
    doc["spec"]["storage"]["uri"] = f"file://{tmp_path}/runs/{{name}}"
    doc["spec"] = patched(doc["spec"], patch)
    path = tmp_path / "run.yaml"
    path.write_bytes(raw if raw is not None else yaml.safe_dump(doc).encode())
    return path


# (patch of spec, field named in the message): each accepted by neither the CLI nor the operator.
BAD_SPECS = {
    "string-for-integer": ({"data": {"numExamples": "96"}}, "spec.data.numExamples"),
    "bool-for-integer": ({"flow": {"maxChunks": True}}, "spec.flow.maxChunks"),
    "float-for-integer": ({"flow": {"chunkTokens": 64.0}}, "spec.flow.chunkTokens"),
    "string-for-number": ({"training": {"learningRate": "0.0001"}}, "spec.training.learningRate"),
    "unbounded-examples": ({"data": {"numExamples": 10**20}}, "spec.data.numExamples"),
    "unbounded-shard": ({"data": {"shardSize": 10**9}}, "spec.data.shardSize"),
    "negative-seed": ({"seed": -1}, "spec.seed"),
    "bucketless-uri": ({"storage": {"uri": "s3:///runs"}}, "spec.storage.uri"),
    "memory-uri": ({"storage": {"uri": "memory://runs"}}, "spec.storage.uri"),
    "system-dir": ({"storage": {"uri": "file:///etc/flowdpo"}}, "spec.storage.uri"),
    "dotdot": ({"storage": {"uri": "file:///tmp/../etc/x"}}, "spec.storage.uri"),
    "unknown-placeholder": (
        {"flow": {"stopUserTemplate": "Q: {problem} A: {solution} {__class__}"}}, "spec.flow.stopUserTemplate"
    ),
    "unbalanced-brace": ({"flow": {"stopUserTemplate": "Q: {problem} A: {solution} }"}}, "spec.flow.stopUserTemplate"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_refused_by_validate_and_by_the_operator(case, tmp_path):
    patch, field = BAD_SPECS[case]
    refused(cli("validate", str(run_file(tmp_path, patch))), field.removeprefix("spec.").split(".")[-1])
    cluster_spec = {**QUICKSTART["spec"], "storage": {"uri": "s3://bucket/runs/{name}", "secretName": "s3"}}
    body = {"apiVersion": QUICKSTART["apiVersion"], "kind": QUICKSTART["kind"], "metadata": {"name": "demo"},
            "spec": patched(cluster_spec, patch)}
    result = validate(body)
    assert not result.ok and any(e.startswith(field) for e in result.errors), result.errors
    assert not (tmp_path / "runs").exists()  # validate writes nothing


def test_kubectl_style_numbers_are_accepted(tmp_path):
    """`1e-4` is a float in YAML 1.2 (kubectl); the CLI reads it the same way."""
    text = run_file(tmp_path).read_text().replace("learningRate: 0.0001", "learningRate: 1e-4")
    assert "learningRate: 1e-4" in text
    (tmp_path / "run.yaml").write_text(text)
    assert load_document(tmp_path / "run.yaml").spec.training.learning_rate == 1e-4


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    doc = yaml.safe_dump(QUICKSTART)
    bomb = "\n".join(lines) + "\n" + doc
    proc = cli("validate", str(run_file(tmp_path, raw=bomb.encode())))
    refused(proc, "aliases")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: a second `seed:` would silently win."""
    text = yaml.safe_dump(QUICKSTART, sort_keys=False)
    assert "\n  seed: 0\n" in text
    twice = text.replace("\n  seed: 0\n", "\n  seed: 0\n  seed: 7\n", 1)
    proc = cli("validate", str(run_file(tmp_path, raw=twice.encode())))
    first = twice.splitlines().index("  seed: 0") + 1
    refused(proc, "'seed'", f"lines {first} and {first + 1}", "given twice in one mapping")
    # the same key in two mappings (spec.seed, spec.data.seed) is fine; so is a merge key (<<) next to a key it
    # brings in, and an alias read twice
    merged = b"a: &a {seed: 1, x: [1]}\nb:\n  <<: *a\n  seed: 2\nc: *a\nd: *a\n"
    assert load_run_yaml(merged, "m.yaml") == {
        "a": {"seed": 1, "x": [1]}, "b": {"seed": 2, "x": [1]}, "c": {"seed": 1, "x": [1]}, "d": {"seed": 1, "x": [1]}
    }
    with pytest.raises(RunFileError, match=r"'x' \(lines 2 and 3\)"):
        load_run_yaml(b"a:\n  x: 1\n  x: 2\n", "m.yaml")


def test_non_utf8_run_file_is_refused(tmp_path):
    raw = yaml.safe_dump(QUICKSTART).encode().replace(b"quickstart", b"quick\xffstart", 1)
    refused(cli("validate", str(run_file(tmp_path, raw=raw))), "UTF-8")


def test_failed_prepare_leaves_no_spec_behind_and_the_corrected_file_runs(tmp_path):
    bad = run_file(tmp_path, {"data": {"source": "jsonl", "path": str(tmp_path / "missing.jsonl")}})
    refused(cli("prepare", str(bad)), "data", "missing.jsonl")
    folder = tmp_path / "runs" / "quickstart"
    assert not (folder / RunLayout.spec).exists()
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(12)]
    (tmp_path / "missing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = cli("prepare", str(bad))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (folder / RunLayout.manifest).exists()


def test_prepare_says_which_rows_it_skipped_and_what_is_missing(tmp_path):
    rows = [json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) for i in range(12)]
    rows.insert(3, '{"question": "cut off')
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n")
    proc = cli("prepare", str(run_file(tmp_path, {"data": {"source": "jsonl", "path": str(tmp_path / "data.jsonl")}})))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 x malformed JSON line, first at data.jsonl:4" in proc.stderr
    assert "data.numExamples asks for 96, the source has only 12 usable" in proc.stderr
    assert proc.stdout.startswith("12 examples in 2 shards")


def _records(**changes):
    """A progress.json as the trainer writes it (build_progress), with `changes` applied (None deletes)."""
    from flowdpo.run.progress import build_progress
    from flowdpo.train.online import TrainerState

    state = TrainerState()
    state.last = {"answer": {"loss": 0.69, "margin": 0.01, "accuracy": 0.5}}
    p = build_progress("demo", "Training", state, {"examples": 8, "shards": 1, "skipped": {"malformed JSON line": 1}},
                       live={"examplesRolledOut": 3, "examplesInRunningShard": 3, "tokensPerSecond": 12.5})  # fmt: skip
    p["adaptersInSync"] = {"inSync": False, "workers": 2, "notInSync": ["w1"], "maxDeviation": 0.3}
    for k, v in changes.items():
        if v is None:
            p.pop(k)
        else:
            p[k] = v
    return json.dumps(p).encode()


@pytest.mark.parametrize(
    ("key", "blob", "words"),
    [
        (RunLayout.progress, b"{not json", "not valid JSON"),
        (RunLayout.progress, b"\xff\xfe\x00garbage", ""),
        (RunLayout.progress, b"[]", "not a JSON object"),
        (RunLayout.progress, b"{}", "'phase' missing"),
        (RunLayout.progress, _records(examples="12"), "'examples' is not a count"),
        (RunLayout.progress, _records(progressiveAccuracy=1.5), "'progressiveAccuracy' is not null or a number"),
        (RunLayout.progress, _records(pairs=[1, 2]), "'pairs' is not {adapter: {mined, trained}}"),
        (RunLayout.progress, _records(baselines={"zeroShot": 3}), "'baselines' is not"),
        (RunLayout.progress, _records(adapterVersions={"answer": True}), "'adapterVersions' is not"),
        (RunLayout.progress, _records(adaptersInSync={"notInSync": [1]}), "'adaptersInSync' is not"),
        (RunLayout.progress, _records(live={"examplesRolledOut": -1}), "'live' is not"),
    ],
)
def test_status_names_a_corrupt_progress_file(tmp_path, key, blob, words):
    """A progress.json that is not JSON, or JSON of another shape (damaged, or written by something else), is
    named with what is wrong: by `flowdpo status`, by the report, and in the operator's status (never a
    traceback in a reconcile loop)."""
    from flowdpo.report.run import write_report
    from flowdpo.storage import CorruptObjectError
    from flowdpo_operator.progress import read_progress as operator_read

    folder = tmp_path / "run"
    open_store(f"file://{folder}").put(key, blob)
    refused(cli("status", str(folder)), key, words)
    assert (folder / key).read_bytes() == blob  # nothing lost: the damaged object is left for inspection
    seen = operator_read(f"file://{folder}", {})
    assert seen.reachable and seen.progress is None and "progress.json" in seen.error and words in seen.error
    with pytest.raises(CorruptObjectError, match="progress.json"):
        write_report(open_store(f"file://{folder}"), out_dir=tmp_path / "report")


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({}, "'exampleId' missing; 'correct' missing"),
        ({"exampleId": 5, "correct": True}, "'exampleId' has the wrong type"),
        ({"exampleId": "a", "correct": "yes"}, "'correct' has the wrong type"),
        ({"exampleId": "a", "correct": True, "baselines": [1]}, "'baselines' has the wrong type"),
        ({"exampleId": "a", "correct": True, "pairs": "x", "tokens": -3}, "'pairs' has the wrong type or form; 'tokens'"),
        ({"exampleId": "a", "correct": True, "attempt": "../../adapters/x"}, "'attempt' has the wrong type or form"),
    ],
)
def test_a_results_row_of_another_shape_is_named_by_the_report_and_the_trainer(tmp_path, row, words):
    """The trainer and the report read a shard's results rows; a row they cannot use names the object and row
    (the trainer's consume loop crashed on a KeyError and the report on an IndexError)."""
    from flowdpo.run.records import read_results
    from flowdpo.storage import CorruptObjectError
    from flowdpo.train.online import read_pairs

    folder = tmp_path / "run"
    store = open_store(f"file://{folder}")
    good = {"exampleId": "ok", "correct": False, "attempt": "0123456789ab"}
    store.create_jsonl(RunLayout.results(0), [good, row])
    refused(cli("report", str(folder)), "results/shard-000000.jsonl row 2", words)
    for read in (read_results, read_pairs):
        with pytest.raises(CorruptObjectError, match="results/shard-000000.jsonl row 2"):
            read(store, 0)


def test_a_pair_the_trainer_cannot_train_on_is_named(tmp_path):
    """Pairs are read by the trainer only; a damaged one (another adapter, a token id past the vocabulary,
    an empty side) names the pairs object and row before any training step uses it."""
    from flowdpo.run.records import check_pairs, pair_problem
    from flowdpo.storage import CorruptObjectError
    from flowdpo.train.online import read_pairs

    pair = {"pairId": "q/node-01", "adapter": "answer", "scoring": "sequence",
            "promptIds": [1, 2], "chosenIds": [3], "rejectedIds": [4, 5]}  # fmt: skip
    assert pair_problem(pair, vocab=10) is None
    assert "below 5" in pair_problem(pair, vocab=5)
    assert "'adapter' is not one of" in pair_problem({**pair, "adapter": "critic"})
    assert "'chosenIds' is empty" in pair_problem({**pair, "chosenIds": [], "scoring": "token-set"})
    assert pair_problem({**pair, "chosenIds": []}) is None  # a sequence of no tokens scores 0: trainable
    assert "'promptIds' is not a list of token ids" in pair_problem({**pair, "promptIds": [1, -2]})
    assert "'scoring' is not one of" in pair_problem({**pair, "scoring": "max"})
    with pytest.raises(CorruptObjectError, match="pairs.jsonl row 2: not a DPO pair"):
        check_pairs([pair, {**pair, "rejectedIds": "4 5"}], "pairs.jsonl")
    store = open_store(f"file://{tmp_path}/run")
    store.create_jsonl(RunLayout.results(0), [{"exampleId": "q", "correct": True, "attempt": "a1"}])
    store.create_jsonl(RunLayout.pairs(0, "a1"), [pair, {**pair, "adapter": 3}])
    with pytest.raises(CorruptObjectError, match=r"pairs/shard-000000/a1.jsonl row 2: not a DPO pair \('adapter'"):
        read_pairs(store, 0)


def test_progress_as_the_trainer_writes_it_passes_the_check_and_reads_back(tmp_path):
    """The shape check accepts every progress.json the trainer writes (optional parts present or absent)."""
    from flowdpo.run.progress import format_progress, progress_problem

    full = json.loads(_records())
    assert progress_problem(full) is None
    lean = json.loads(_records(live=None, adaptersInSync=None, last=None, trainerSteps=None, updatedAt=None))
    assert progress_problem(lean) is None
    assert progress_problem({"phase": "Succeeded"}) is None  # only the phase must be there
    assert "elapsed -  rate -  ETA -" in format_progress({"run": "demo", "phase": "Succeeded"})
    folder = tmp_path / "run"
    open_store(f"file://{folder}").put(RunLayout.progress, json.dumps(lean).encode())
    proc = cli("status", str(folder))
    assert proc.returncode == 0 and proc.stdout == format_progress(lean) + "\n"
    assert "rolled out          3/8 (3 in the running shard, 12 tokens/s)" in format_progress(full)


@pytest.mark.parametrize(
    "pointer", [b"[1, 2]", b'{"answer": "7", "stop": 1}', b'{"answer": -1}', b"\x00\x01"]
)
def test_a_garbage_adapter_pointer_is_named(tmp_path, pointer):
    from flowdpo.loader import latest_versions
    from flowdpo.storage import CorruptObjectError

    store = open_store(f"file://{tmp_path}/run")
    store.put(RunLayout.adapters_latest, pointer)
    with pytest.raises(CorruptObjectError, match="adapters/LATEST.json"):
        latest_versions(store)


def test_a_garbage_results_line_is_named_with_its_line(tmp_path):
    from flowdpo.storage import CorruptObjectError

    store = open_store(f"file://{tmp_path}/run")
    store.put(RunLayout.results(0), b'{"exampleId": "a"}\n{truncated\n')
    with pytest.raises(CorruptObjectError, match=r"results/shard-000000.jsonl line 2"):
        store.get_jsonl(RunLayout.results(0))


def test_bad_data_rows_are_skipped_counted_and_shown(tmp_path):
    """One bad line must not reject a data file: a non-UTF-8 line, an oversized question and a non-finite
    gold are skipped and counted; the counts reach progress.json, `flowdpo status` and the report."""
    from flowdpo.data import load_examples
    from flowdpo.run.progress import build_progress, format_progress
    from flowdpo.spec import DataSpec
    from flowdpo.train.online import TrainerState

    good = [json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}).encode() for i in range(5)]
    bad = [
        b'{"question": "caf\xe9?", "answer": "#### 1"}',  # Latin-1, not UTF-8
        json.dumps({"question": "x" * 30_000, "answer": "#### 2"}).encode(),
        json.dumps({"question": "What is 0/0?", "answer": "#### nan"}).encode(),
        json.dumps({"question": "Big?", "answer": "#### inf"}).encode(),
    ]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(good + bad) + b"\n")
    spec = DataSpec.model_validate({"source": "jsonl", "path": str(path), "numExamples": 100, "shardSize": 5})
    examples, report = load_examples(spec)
    assert len(examples) == 5
    assert report.skipped == {
        "line is not UTF-8 text": 1,
        "question longer than 20,000 characters": 1,
        "non-finite gold answer": 2,
    }
    manifest = {"examples": 5, "shards": 1, "skipped": report.skipped}
    progress = build_progress("demo", "Training", TrainerState(), manifest)
    assert progress["dataSkipped"] == report.skipped
    assert "data rows skipped   4 (2 x non-finite gold answer" in format_progress(progress)


# -- every number of the spec, found by walking the model (fields added later are covered too) ----------
def _numeric_fields():
    """(camelCase path under spec, base type, lower bound, upper bound) of every int/float leaf field."""
    import typing

    import annotated_types
    from pydantic import BaseModel

    from flowdpo.spec import RunSpec

    out = []

    def flat(annotation, in_list=False):
        """(type, inside a list?) of each alternative of an annotation (Optional and list unwrapped)."""
        if typing.get_origin(annotation) is list:
            return [t for a in typing.get_args(annotation) for t in flat(a, True)]
        if typing.get_args(annotation) and typing.get_origin(annotation) is not typing.Literal:
            return [t for a in typing.get_args(annotation) for t in flat(a, in_list)]
        return [(annotation, in_list)]

    def walk(model, path):
        for name, f in model.model_fields.items():
            key = f"{path}.{f.alias or name}"
            options = flat(f.annotation)
            sub = [(a, lst) for a, lst in options if isinstance(a, type) and issubclass(a, BaseModel)]
            if sub:
                walk(sub[0][0], f"{key}.0" if sub[0][1] else key)  # a list of sections: its first item
                continue
            base = next((a for a, lst in options if a in (int, float) and not lst), None)
            if base is None:
                continue
            lo = next((m for m in f.metadata if isinstance(m, (annotated_types.Ge, annotated_types.Gt))), None)
            hi = next((m for m in f.metadata if isinstance(m, (annotated_types.Le, annotated_types.Lt))), None)
            out.append((key, base, lo, hi))

    walk(RunSpec, "spec")
    return out


NUMERIC_FIELDS = _numeric_fields()


# A valid item of each list of sections, for the fields inside it.
LIST_ITEMS = {"data.tasks": {"name": "chain_sum"}, "compile.evaluation.sets": {"name": "heldout"}}


def _nested(path: str, value) -> dict:
    """{"a": {"b": value}} for "spec.a.b"; "spec.a.0.b" puts a valid list item with b = value in a."""
    *parents, leaf = path.removeprefix("spec.").split(".")
    patch = {leaf: value}
    for i in range(len(parents) - 1, -1, -1):
        if parents[i] == "0":
            patch = [{**LIST_ITEMS[".".join(parents[:i])], **patch}]
        else:
            patch = {parents[i]: patch}
    return patch


def test_every_number_in_the_spec_has_both_bounds():
    """An unbounded number lets one typo ask for 10^20 examples or an infinite beta: every int and float
    field of the run spec declares a lower and an upper bound (the CRD carries them to the API server)."""
    assert len(NUMERIC_FIELDS) > 30, NUMERIC_FIELDS  # the walk found the spec's numbers
    unbounded = [path for path, _, lo, hi in NUMERIC_FIELDS if lo is None or hi is None]
    assert not unbounded, f"numbers without a lower and an upper bound: {unbounded}"


@pytest.mark.parametrize("path", [p for p, *_ in NUMERIC_FIELDS])
def test_every_number_past_its_bound_or_of_the_wrong_type_is_refused_naming_it(path):
    from flowdpo.spec import SpecError, parse_document

    _, base, _, hi = next(f for f in NUMERIC_FIELDS if f[0] == path)
    bound = getattr(hi, "le", None) if getattr(hi, "le", None) is not None else hi.lt
    too_big = bound + 1 if base is int else (float("inf") if bound > 1 else bound * 2 + 1)
    values = [too_big, "12", [1]] + ([float("nan")] if base is float else [1.5])
    cluster_spec = {**QUICKSTART["spec"], "storage": {"uri": "s3://bucket/runs/{name}", "secretName": "s3"}}
    for value in values:
        body = {**QUICKSTART, "spec": patched(QUICKSTART["spec"], _nested(path, value))}
        with pytest.raises(SpecError) as e:
            parse_document(body, "run.yaml")
        assert f"  {path}: " in str(e.value), (value, str(e.value))
        result = validate({**body, "metadata": {"name": "demo"}, "spec": patched(cluster_spec, _nested(path, value))})
        assert not result.ok and any(err.startswith(path) for err in result.errors), (value, result.errors)

