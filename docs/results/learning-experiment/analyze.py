"""The pre-registered analysis of the learning experiment (PLAN.md): reads the main and the control run from
their storage and writes results.json, results.md and the figures next to this file.

    .venv/bin/python docs/results/learning-experiment/analyze.py [--main runs/learn-main] [--control runs/learn-control]
        [--archive-to rows.json.gz]     # also keep every object it read, in one file to commit
    .venv/bin/python docs/results/learning-experiment/analyze.py --from-archive rows.json.gz

The rows live in the runs' storage; a run on a machine of its own loses them with the machine. `--archive-to`
writes every object this analysis reads (the held-out outcomes, slimmed to the fields used here, the eval
table, the reports, the adapter and progress records) into one gzipped JSON file small enough to commit, and
`--from-archive` computes the same results from it.

Primary endpoint: accuracy of the FINAL trained flow minus the untrained flow on the held-out questions, every
question answered 4 times by each flow from the same sampling seeds; paired bootstrap clustered by question
(10,000 resamples), 95% percentile interval. Everything here is computed from stored outcomes only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from flowdpo.grading import grade
from flowdpo.report.fmt import auc_text, num
from flowdpo.report.stats import clustered_bootstrap_difference, wilson_interval
from flowdpo.storage import RunLayout, open_store

SET = "heldout"
RESAMPLES = 10_000


MAIN_ROWS = ("flow-trained", "flow-untrained", "zero-shot-sampled")
CONTROL_ROWS = ("flow-trained",)
# The fields of an outcome this analysis reads; the archive keeps only these.
OUTCOME_FIELDS = ("exampleId", "correct", "answer", "gold", "endReason", "extracted", "tokens", "chunks")
REPORT_JSON = f"{RunLayout.report_dir}/report.json"  # written by `flowdpo report`


def _run_keys(rows: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(JSONL keys, JSON keys) this analysis reads from one run's storage."""
    jsonl = [RunLayout.eval_outcomes(row, SET) for row in rows]
    json_keys = [RunLayout.eval_table_json, REPORT_JSON, RunLayout.adapters_latest, RunLayout.progress]
    return jsonl, json_keys


def write_archive(main_store, control_store, path: Path) -> dict[str, int]:
    """Every object the analysis reads from both runs, into one gzipped JSON file; returns the object counts.
    A JSON object absent from a run is left out (the analysis treats it as absent); a missing outcome row
    raises, as the analysis would."""
    doc: dict[str, dict] = {}
    for name, store, rows in (("main", main_store, MAIN_ROWS), ("control", control_store, CONTROL_ROWS)):
        jsonl, json_keys = _run_keys(rows)
        objects: dict = {k: [{f: r[f] for f in OUTCOME_FIELDS if f in r} for r in store.get_jsonl(k)] for k in jsonl}
        for k in json_keys:
            v = store.get_json_or(k)
            if v is not None:
                objects[k] = v
        doc[name] = objects
    data = json.dumps({"format": "flowdpo-analysis-archive/1", "set": SET, "runs": doc}, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(data, mtime=0))
    tmp.replace(path)
    return {name: len(objs) for name, objs in doc.items()}


class Archived:
    """One run's objects read back from an archive, with the read methods of a store that this script uses."""

    def __init__(self, objects: dict):
        self._objects = objects

    def get_jsonl(self, key: str) -> list[dict]:
        return self._objects[key]

    def get_json(self, key: str):
        return self._objects[key]

    def get_json_or(self, key: str, default=None):
        return self._objects.get(key, default)


def read_archive(path: Path) -> tuple[Archived, Archived]:
    try:
        doc = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, ValueError) as e:
        raise SystemExit(f"{path}: not an analysis archive ({e})") from None
    runs = doc.get("runs") if isinstance(doc, dict) else None
    if (
        not isinstance(runs, dict)
        or not all(isinstance(runs.get(name), dict) for name in ("main", "control"))
        or doc.get("format") != "flowdpo-analysis-archive/1"
        or doc.get("set") != SET
    ):
        raise SystemExit(f"{path}: not an analysis archive of the {SET!r} set (format flowdpo-analysis-archive/1)")
    return Archived(runs["main"]), Archived(runs["control"])


def outcomes(store, row: str) -> dict[str, list[dict]]:
    """question -> its answers (in sample order) of one eval row."""
    per_q: dict[str, list[dict]] = {}
    for r in store.get_jsonl(RunLayout.eval_outcomes(row, SET)):
        per_q.setdefault(r["exampleId"], []).append(r)
    return per_q


def accuracy(per_q: dict[str, list[dict]]) -> dict:
    answers = [a for rs in per_q.values() for a in rs]
    k = sum(a["correct"] for a in answers)
    lo, hi = wilson_interval(k, len(answers))
    return {"answers": len(answers), "questions": len(per_q), "correct": k, "accuracy": k / len(answers), "ci95WilsonAnswers": [lo, hi]}


def compare(a: dict[str, list[dict]], b: dict[str, list[dict]]) -> dict:
    common = sorted(set(a) & set(b))
    return clustered_bootstrap_difference(
        [[r["correct"] for r in a[q]] for q in common], [[r["correct"] for r in b[q]] for q in common], resamples=RESAMPLES
    )


def regrade(per_q: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The same answers graded by today's grader."""
    return {q: [{**r, "correct": grade(r["answer"], r["gold"]).correct} for r in rs] for q, rs in per_q.items()}


def changed(before: dict[str, list[dict]], after: dict[str, list[dict]]) -> dict:
    """How many verdicts a regrade turned, each way."""
    pairs = [(a["correct"], b["correct"]) for q in before for a, b in zip(before[q], after[q])]
    return {"wrongToRight": sum(1 for a, b in pairs if not a and b), "rightToWrong": sum(1 for a, b in pairs if a and not b)}


def ends(per_q: dict[str, list[dict]]) -> dict:
    answers = [a for rs in per_q.values() for a in rs]
    n = len(answers)
    truncated = sum(1 for a in answers if a.get("endReason") == "max_chunks" and a.get("extracted") is None)
    reasons: dict[str, int] = {}
    for a in answers:
        reasons[a.get("endReason", "?")] = reasons.get(a.get("endReason", "?"), 0) + 1
    return {
        "truncatedWithoutAnswer": truncated / n,
        "endReasons": {k: v / n for k, v in sorted(reasons.items())},
        "meanTokens": sum(a.get("tokens", 0) for a in answers) / n,
        "meanChunks": sum(a.get("chunks", 0) for a in answers) / n,
    }


# PLAN.md section 5: the minimum detectable effect at 80% power (upper bound), for a result without an effect.
MDE_POINTS = 4.9


def decide(primary_ci: list[float] | None, control_ci: list[float] | None, main_vs_control_ci: list[float] | None) -> dict:
    """PLAN.md's decision rule (section 3) and its attribution clause (section 7), applied to the intervals.

    H1 is supported when the primary interval's lower end is above 0; an interval that includes 0 is "no
    measurable effect at this scale"; an upper end below 0 is "training made the flow worse". A supported H1
    whose control improves too, with the main flow not better than the control's, is "not attributable to the
    preferences"."""
    if not primary_ci:
        return {"outcome": "missing", "text": "the primary endpoint has no interval (rows missing)"}
    lo, hi = primary_ci
    if lo > 0:
        control_improves = bool(control_ci) and control_ci[0] > 0
        beats_control = bool(main_vs_control_ci) and main_vs_control_ci[0] > 0
        if control_improves and not beats_control:
            return {
                "outcome": "not-attributable",
                "text": "the trained flow beats the untrained flow, but the control improves as well and the main "
                "flow is not measurably better than the control's: not attributable to the preferences",
            }
        return {"outcome": "H1", "text": "H1 supported: the 95% interval of the primary endpoint lies above zero"}
    if hi < 0:
        return {"outcome": "worse", "text": "training made the flow worse: the 95% interval lies below zero"}
    return {
        "outcome": "no-effect",
        "text": f"no measurable effect at this scale: the 95% interval includes zero (minimum detectable effect "
        f"at 80% power at most {MDE_POINTS} points)",
    }


def _diff(d: dict | None) -> str:
    if not d or d.get("difference") is None:
        return "-"
    lo, hi = d["ci95"]
    return f"{100 * d['difference']:+.1f} points ({100 * lo:+.1f} to {100 * hi:+.1f})"


def _acc(d: dict) -> str:
    lo, hi = d["ci95WilsonAnswers"]
    return f"{100 * d['accuracy']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}), {d['correct']}/{d['answers']}"


def render(result: dict) -> str:
    """results.md: every endpoint of results.json in the order of PLAN.md, read by its rule."""
    acc, sec = result["accuracy"], result["secondary"]
    lines = [
        "# Learning experiment: results (generated by analyze.py from the stored outcomes)",
        "",
        "## Primary endpoint (PLAN.md section 3)",
        "",
        (f"Final trained flow minus untrained flow, {result['primary'].get('questions')} held-out questions x "
        f"{result['primary'].get('samplesPerQuestion')} samples, clustered bootstrap 95% interval: "
        f"**{_diff(result['primary'])}**."),
        "",
        f"Decision: **{result['decision']['text']}**.",
        "",
        "| flow (held-out, T 0.7, 256 tokens) | accuracy (Wilson 95% over answers) |",
        "| --- | --- |",
        f"| trained flow (final adapters) | {_acc(acc['trainedFlow'])} |",
        f"| untrained flow | {_acc(acc['untrainedFlow'])} |",
        f"| control's trained flow (preferences swapped at random) | {_acc(acc['controlTrainedFlow'])} |",
        f"| zero-shot, sampled the same way | {_acc(acc['zeroShotSampled'])} |",
        "",
        "## Secondary endpoints (PLAN.md section 4; no decision attached)",
        "",
        "| comparison | difference (clustered bootstrap 95%) |",
        "| --- | --- |",
        f"| control's trained flow - untrained flow | {_diff(result['control']['controlTrainedMinusUntrained'])} |",
        f"| main trained flow - control's trained flow | {_diff(result['control']['mainTrainedMinusControlTrained'])} |",
        f"| untrained flow - zero-shot sampled | {_diff(sec['untrainedFlowVsZeroShotSampled'])} |",
        f"| trained flow - zero-shot sampled | {_diff(sec['trainedFlowVsZeroShotSampled'])} |",
        "",
    ]
    ends = sec["ends"]
    lines += [
        "| flow | no final answer at the budget | mean tokens | mean chunks | end reasons |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("trained", "untrained", "control"):
        e = ends[name]
        reasons = ", ".join(f"{k} {100 * v:.0f}%" for k, v in e["endReasons"].items())
        lines.append(
            f"| {name} | {100 * e['truncatedWithoutAnswer']:.1f}% | {e['meanTokens']:.0f} | {e['meanChunks']:.2f} | {reasons} |"
        )
    stop = sec.get("stopDiscrimination") or {}
    if stop.get("untrained"):
        lines += [
            "",
            (f"Stop decision on the untrained flow's {stop.get('partials')} held-out partial answers "
            f"({stop.get('complete')} already right):"),
            "",
            "| Stop adapter | AUC of P(yes) (95%) | mean P(yes), already right | mean P(yes), not yet |",
            "| --- | --- | --- | --- |",
        ]
        for name in ("untrained", "trained"):
            m = stop.get(name) or {}
            lines.append(
                f"| {name} | {auc_text(m)} | {num(m.get('meanPYesComplete'))} | {num(m.get('meanPYesIncomplete'))} |"
            )
    lines += [
        "",
        "Compile table (held-out questions; greedy unless a decoding is given):",
        "",
        "| row | accuracy (Wilson 95%) | correct/answers |",
        "| --- | --- | --- |",
    ]
    for r in sec["compileTable"]:
        dec = r.get("decoding")
        label = r["label"] + (f" [T {dec['temperature']}, {dec['maxNewTokens']} tokens]" if dec else "")
        if r.get("accuracy") is None:
            lines.append(f"| {label} | - | - |")
            continue
        lo, hi = r["ci95"]
        lines.append(
            f"| {label} | {100 * r['accuracy']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) | {r['correct']}/{r['examples']} |"
        )
    sens = result.get("sensitivityTodaysGrader")
    if sens:
        lines += [
            "",
            "## Sensitivity (NOT pre-registered)",
            "",
            (f"The primary endpoint with both flows' answers regraded by today's grader: {_diff(sens)}; verdicts "
            f"changed: trained {sens['changedVerdicts']['trained']}, untrained {sens['changedVerdicts']['untrained']}."),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", default=str(ROOT / "runs/learn-main"))
    ap.add_argument("--control", default=str(ROOT / "runs/learn-control"))
    ap.add_argument("--archive-to", type=Path, help="also write every object read into this gzipped JSON file")
    ap.add_argument("--from-archive", type=Path, help="read both runs from an archive instead of their storage")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    if args.from_archive:
        main_store, control_store = read_archive(args.from_archive)
    else:
        main_store = open_store(f"file://{Path(args.main).resolve()}", create=False)
        control_store = open_store(f"file://{Path(args.control).resolve()}", create=False)
        if args.archive_to:
            counts = write_archive(main_store, control_store, args.archive_to)
            print(f"archived {counts} objects into {args.archive_to}", file=sys.stderr)

    trained, untrained, zero_sampled = (outcomes(main_store, row) for row in MAIN_ROWS)
    (control,) = (outcomes(control_store, row) for row in CONTROL_ROWS)
    table = main_store.get_json(RunLayout.eval_table_json)
    report = main_store.get_json(REPORT_JSON)
    control_report = control_store.get_json(REPORT_JSON)

    primary = compare(trained, untrained)
    result = {
        "primary": {
            "what": "final trained flow minus untrained flow, held-out questions x 4 samples, clustered bootstrap",
            **primary,
            "effect": primary["ci95"][0] > 0,
        },
        "control": {
            "controlTrainedMinusUntrained": compare(control, untrained),
            "mainTrainedMinusControlTrained": compare(trained, control),
        },
        "accuracy": {
            "trainedFlow": accuracy(trained),
            "untrainedFlow": accuracy(untrained),
            "controlTrainedFlow": accuracy(control),
            "zeroShotSampled": accuracy(zero_sampled),
        },
        "secondary": {
            "progressive": {
                "main": report.get("progressiveAccuracy"),
                "mainVsUntrained": report.get("baselines", {}).get("untrainedFlow"),
                "control": control_report.get("progressiveAccuracy"),
                "controlVsUntrained": control_report.get("baselines", {}).get("untrainedFlow"),
            },
            "untrainedFlowVsZeroShotSampled": compare(untrained, zero_sampled),
            "trainedFlowVsZeroShotSampled": compare(trained, zero_sampled),
            "stopDiscrimination": table.get("stopDiscrimination"),
            "ends": {"trained": ends(trained), "untrained": ends(untrained), "control": ends(control)},
            "compileTable": [
                {"row": r["row"], "label": r["label"], "decoding": r.get("decoding"), **r["results"].get(SET, {})}
                for r in table["rows"]
            ],
        },
        "runs": {
            "main": report.get("run"),
            "control": control_report.get("run"),
            "mainAdapterVersions": main_store.get_json_or(RunLayout.adapters_latest),
            "controlAdapterVersions": control_store.get_json_or(RunLayout.adapters_latest),
            "mainElapsedSeconds": (main_store.get_json_or(RunLayout.progress) or {}).get("elapsedSeconds"),
            "controlElapsedSeconds": (control_store.get_json_or(RunLayout.progress) or {}).get("elapsedSeconds"),
        },
    }
    # A check of the stored verdicts: every answer is regraded with today's grader.
    regraded = sum(grade(r["answer"], r["gold"]).correct != r["correct"] for rs in trained.values() for r in rs)
    result["regradedDisagreements"] = regraded
    # NOT pre-registered (added after the plan, before the primary endpoint was known): the grader was fixed
    # after the runs graded their answers (hedges, number words, escaped dollars, ...). The primary endpoint
    # with both flows' answers regraded by today's grader says whether the result depends on those fixes.
    regraded_trained, regraded_untrained = regrade(trained), regrade(untrained)
    result["sensitivityTodaysGrader"] = {
        "what": "primary endpoint with every answer of both flows regraded by today's grader (not pre-registered)",
        **compare(regraded_trained, regraded_untrained),
        "changedVerdicts": {"trained": changed(trained, regraded_trained), "untrained": changed(untrained, regraded_untrained)},
    }
    result["decision"] = decide(
        primary["ci95"],
        result["control"]["controlTrainedMinusUntrained"]["ci95"],
        result["control"]["mainTrainedMinusControlTrained"]["ci95"],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results.md").write_text(render(result))
    print(json.dumps({"primary": result["primary"], "control": result["control"], "decision": result["decision"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
