"""`flowdpo run|status|report|prepare|validate|signal`: the commands of a run on one machine."""

from __future__ import annotations

import sys
from pathlib import Path

from flowdpo.cli.arguments import any_int, number, port
from flowdpo.cli.common import add_storage_option, load_run_file, load_with_storage, local_run_dir, run_uri


def cmd_run(args) -> int:
    from flowdpo.metrics import Metrics
    from flowdpo.run.local import run_local

    doc = load_with_storage(args)
    metrics = Metrics(doc.name)
    if args.metrics_port:
        metrics.serve(args.metrics_port)
        print(f"metrics: http://127.0.0.1:{args.metrics_port}/metrics", file=sys.stderr)
    print(f"run {doc.name}: storage {doc.storage_uri()}", file=sys.stderr)
    progress = run_local(doc, metrics=metrics, show_progress=not args.no_progress)
    from flowdpo.run.progress import format_progress

    print(format_progress(progress))
    if progress["phase"] == "Succeeded" and not args.no_report:
        from flowdpo.report.run import write_report
        from flowdpo.storage import open_store

        paths = write_report(open_store(doc.storage_uri()))
        print(f"report: {paths['markdown']}\nfigure: {paths['figure']}")
    return 0


def cmd_status(args) -> int:
    from flowdpo.run.progress import format_progress, read_progress
    from flowdpo.storage import open_store

    store = open_store(run_uri(args.run), create=False)
    progress = read_progress(store)
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
    from flowdpo.report.run import write_report
    from flowdpo.storage import open_store

    try:
        paths = write_report(open_store(run_uri(args.run), create=False), out_dir=Path(args.out) if args.out else None)
    except ValueError as e:  # nothing to report yet: say what to do, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_prepare(args) -> int:
    from flowdpo.run.prepare import prepare_run
    from flowdpo.storage import open_store

    doc = load_with_storage(args)
    store = open_store(doc.storage_uri())
    m = prepare_run(store, doc)
    print(f"{m['examples']} examples in {m['shards']} shards under {doc.storage_uri()}")
    return 0


def cmd_signal(args) -> int:
    from flowdpo.signal.check import SignalSettings, run_signal
    from flowdpo.signal.render import render_markdown, write_outputs

    doc = load_with_storage(args)
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
    out = Path(args.out) if args.out else local_run_dir(doc) / "signal"
    paths = write_outputs(report, out)
    print(render_markdown(report))
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_validate(args) -> int:
    doc = load_run_file(args.file)
    print(doc.to_yaml(), end="")
    return 0


def add_subparsers(sub) -> None:
    r = sub.add_parser("run", help="run the whole pipeline on this machine (resumes if stopped)")
    r.add_argument("file", nargs="?", help="FlowDPORun YAML (default: the embedded quickstart)")
    add_storage_option(r)
    r.add_argument("--metrics-port", type=port, help="serve Prometheus metrics on 127.0.0.1:PORT")
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
    add_storage_option(pr)
    pr.set_defaults(func=cmd_prepare)

    v = sub.add_parser("validate", help="validate a run file and print the resolved spec")
    v.add_argument("file", help="FlowDPORun YAML")
    v.set_defaults(func=cmd_validate)

    sg = sub.add_parser(
        "signal",
        help="before training: do this run's DPO pairs carry a learnable signal? (mine once, offline DPO, held-out pair accuracy)",
    )
    sg.add_argument("file", nargs="?", help="FlowDPORun YAML (default: the embedded quickstart)")
    sg.add_argument("--questions", type=any_int, default=64, help="questions to mine pairs from (default 64)")
    sg.add_argument(
        "--lr", type=number, action="append", help="learning rate to try (repeat; default: the run's x 1/3, 1, 3)"
    )
    sg.add_argument("--epochs", type=any_int, default=3, help="passes over the training pairs (default 3)")
    sg.add_argument("--holdout", type=number, default=0.2, help="share of questions held out (default 0.2)")
    sg.add_argument("--length-questions", type=any_int, default=64, help="one-pass answers for the length check")
    sg.add_argument("--seed", type=any_int, default=0)
    add_storage_option(sg)
    sg.add_argument("--out", help="local folder for signal.json/.md/.png (default: <run folder>/signal)")
    sg.add_argument("--no-progress", action="store_true", help="no progress bar")
    sg.set_defaults(func=cmd_signal)
