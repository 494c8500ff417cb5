"""The `flowdpo` command line.

    flowdpo run [RUN.yaml]        the whole pipeline on this machine (default: the embedded quickstart)
    flowdpo status RUN.yaml|DIR|URI      progress of a run
    flowdpo report RUN.yaml|DIR|URI      progressive-accuracy figure + markdown summary
    flowdpo prepare RUN.yaml      write example shards to the run's storage (cluster: the prepare step)
    flowdpo validate RUN.yaml     check a run file and print the resolved spec
    flowdpo signal [RUN.yaml]     before training: do the pairs carry a learnable signal? (+ answer lengths)
    flowdpo worker RUN.yaml       rollout worker over the run's object store (cluster; see flowdpo/distributed)
    flowdpo trainer RUN.yaml      trainer service over the run's object store (cluster)
    flowdpo compile RUN.yaml      after training: traces (flow, base model, ground truth) + SFT per source
    flowdpo eval RUN.yaml         the compile table: 0-shot and SFT models on the eval sets, 95% CIs
    flowdpo judge RUN.yaml ...    pairwise LLM judge (OpenAI-compatible endpoint) of two trace sources
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _storage_arg(value: str) -> str:
    """A run folder or URI: a plain path is a local folder."""
    return value if "://" in value else f"file://{Path(value).resolve()}"


def _run_uri(value: str) -> str:
    """`status`/`report` argument: a run file (its spec.storage.uri), a run folder, or a storage URI."""
    if value.endswith((".yaml", ".yml")) and Path(value).is_file():
        return _load(value).storage_uri()
    return _storage_arg(value)


def _load(path: str | None):
    from flowdpo.spec import load_document, quickstart_path

    return load_document(path or quickstart_path())


def cmd_run(args) -> int:
    from flowdpo.metrics import Metrics
    from flowdpo.runner import run_local

    doc = _load(args.file)
    if args.storage:
        doc.spec.storage.uri = _storage_arg(args.storage)
    metrics = Metrics(doc.name)
    if args.metrics_port:
        metrics.serve(args.metrics_port)
        print(f"metrics: http://127.0.0.1:{args.metrics_port}/metrics", file=sys.stderr)
    print(f"run {doc.name}: storage {doc.storage_uri()}", file=sys.stderr)
    progress = run_local(doc, metrics=metrics, show_progress=not args.no_progress)
    from flowdpo.progress import format_progress

    print(format_progress(progress))
    if progress["phase"] == "Succeeded" and not args.no_report:
        from flowdpo.report import write_report
        from flowdpo.storage import open_store

        paths = write_report(open_store(doc.storage_uri()))
        print(f"report: {paths['markdown']}\nfigure: {paths['figure']}")
    return 0


def cmd_status(args) -> int:
    from flowdpo.progress import format_progress
    from flowdpo.storage import RunLayout, open_store

    store = open_store(_run_uri(args.run), create=False)
    progress = store.get_json_or(RunLayout.progress)
    if progress is None:
        print(f"{args.run}: no progress.json yet (not a run folder, or the run has not finished a shard)", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps(progress, indent=1))
    else:
        print(format_progress(progress))
    return 0


def cmd_report(args) -> int:
    from flowdpo.report import write_report
    from flowdpo.storage import open_store

    try:
        paths = write_report(open_store(_run_uri(args.run), create=False), out_dir=Path(args.out) if args.out else None)
    except ValueError as e:  # nothing to report yet: say what to do, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_prepare(args) -> int:
    from flowdpo.prepare import ensure_spec, prepare
    from flowdpo.storage import open_store

    doc = _load(args.file)
    store = open_store(doc.storage_uri())
    ensure_spec(store, doc)
    m = prepare(store, doc)
    print(f"{m['examples']} examples in {m['shards']} shards under {doc.storage_uri()}")
    return 0


def cmd_signal(args) -> int:
    from flowdpo.signal_check import SignalSettings, render_markdown, run_signal, write_outputs

    doc = _load(args.file)
    if args.storage:
        doc.spec.storage.uri = _storage_arg(args.storage)
    try:
        settings = SignalSettings(
            questions=args.questions,
            learning_rates=args.lr or None,
            epochs=args.epochs,
            holdout=args.holdout,
            length_questions=args.length_questions,
            seed=args.seed,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = run_signal(doc, settings, show_progress=not args.no_progress)
    out = Path(args.out) if args.out else _local_run_dir(doc) / "signal"
    paths = write_outputs(report, out)
    print(render_markdown(report))
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def _local_run_dir(doc) -> Path:
    uri = doc.storage_uri()
    return Path(uri[len("file://") :]) if uri.startswith("file://") else Path(".") / f"{doc.name}-local"


def cmd_validate(args) -> int:
    doc = _load(args.file)
    print(doc.to_yaml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowdpo", description="Train LLM flows with online DPO (Flow-DPO).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the whole pipeline on this machine (resumes if stopped)")
    r.add_argument("file", nargs="?", help="FlowDPORun YAML (default: the embedded quickstart)")
    r.add_argument("--storage", help="override spec.storage.uri (a folder or URI)")
    r.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="show a run's progress")
    s.add_argument("run", help="run file (RUN.yaml), run folder or storage URI")
    s.add_argument("--json", action="store_true", help="print progress.json")
    s.set_defaults(func=cmd_status)

    rep = sub.add_parser("report", help="write the progressive-accuracy figure and a markdown summary")
    rep.add_argument("run", help="run file (RUN.yaml), run folder or storage URI")
    rep.add_argument("--out", help="local output folder (default: <run folder>/report)")
    rep.set_defaults(func=cmd_report)

    pr = sub.add_parser("prepare", help="write example shards into the run's storage")
    pr.add_argument("file", help="FlowDPORun YAML")
    pr.set_defaults(func=cmd_prepare)

    v = sub.add_parser("validate", help="validate a run file and print the resolved spec")
    v.add_argument("file", help="FlowDPORun YAML")
    v.set_defaults(func=cmd_validate)

    sg = sub.add_parser(
        "signal",
        help="before training: do this run's DPO pairs carry a learnable signal? (mine once, offline DPO, held-out pair accuracy)",
    )
    sg.add_argument("file", nargs="?", help="FlowDPORun YAML (default: the embedded quickstart)")
    sg.add_argument("--questions", type=int, default=64, help="questions to mine pairs from (default 64)")
    sg.add_argument(
        "--lr", type=float, action="append", help="learning rate to try (repeat; default: the run's x 1/3, 1, 3)"
    )
    sg.add_argument("--epochs", type=int, default=3, help="passes over the training pairs (default 3)")
    sg.add_argument("--holdout", type=float, default=0.2, help="share of questions held out (default 0.2)")
    sg.add_argument("--length-questions", type=int, default=64, help="one-pass answers for the length check")
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--storage", help="override spec.storage.uri (a folder or URI)")
    sg.add_argument("--out", help="local folder for signal.json/.md/.png (default: <run folder>/signal)")
    sg.add_argument("--no-progress", action="store_true", help="no progress bar")
    sg.set_defaults(func=cmd_signal)

    from flowdpo.distributed.cli import add_subparsers as add_distributed_subparsers

    add_distributed_subparsers(sub)  # worker, trainer
    from flowdpo.compile.cli import add_subparsers as add_compile_subparsers

    add_compile_subparsers(sub)  # compile, eval
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.environ.get("FLOWDPO_OFFLINE"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from flowdpo.models import ModelError
    from flowdpo.prepare import RunConflictError
    from flowdpo.spec import SpecError
    from flowdpo.storage import StoreError

    try:
        return args.func(args)
    except (SpecError, ModelError, RunConflictError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flowdpo status ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
