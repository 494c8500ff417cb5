"""`flowdpo worker`, `flowdpo trainer` and `flowdpo prefetch`: the cluster programs (one rollout worker per
pod; one trainer Job; the Job that fills the model cache volume).

    flowdpo worker RUN.yaml [--metrics-port 9400] [--lease-seconds 60]
    flowdpo trainer RUN.yaml [--metrics-port 9401]
    flowdpo prefetch RUN.yaml
    flowdpo metrics-proxy --upstream http://127.0.0.1:8000/metrics --metrics-port 9401

Both read the run's storage URI from the run file (or --storage) and the standard AWS_* / GOOGLE_* /
AZURE_* environment variables for credentials; neither needs the Kubernetes API. Both exit 0 when the
run's training is complete and can be killed and restarted at any moment.
"""

from __future__ import annotations

import logging
import os
import sys

from flowdpo.cli.arguments import port, positive_seconds
from flowdpo.cli.common import add_storage_option, load_with_storage


def _setup(args):
    from flowdpo.metrics import Metrics

    if not args.verbose:
        logging.getLogger("flowdpo").setLevel(logging.INFO)
    doc = load_with_storage(args)
    metrics = Metrics(doc.name)
    if args.metrics_port:
        metrics.serve(args.metrics_port, addr=args.metrics_addr)
        print(f"metrics: http://{args.metrics_addr}:{args.metrics_port}/metrics", file=sys.stderr)
    return doc, metrics


def cmd_worker(args) -> int:
    from flowdpo.run.worker import run_worker

    doc, metrics = _setup(args)
    print(f"worker for run {doc.name}: storage {doc.storage_uri()}", file=sys.stderr)
    out = run_worker(
        doc,
        metrics,
        lease_seconds=args.lease_seconds,
        poll_seconds=args.poll_seconds,
        worker_id=args.worker_id,
        vllm_url=args.vllm_url,
        adapter_dir=args.adapter_dir,
        linger=args.linger,
    )
    print(f"worker {out['worker']}: every shard has results; {len(out['shards'])} processed here")
    return 0


def cmd_trainer(args) -> int:
    from flowdpo.run.progress import format_progress
    from flowdpo.run.trainer import run_trainer

    rank = int(os.environ.get("RANK", "0"))  # under torchrun: only rank 0 reports (metrics port, progress)
    if rank > 0:
        args.metrics_port = None
    doc, metrics = _setup(args)
    print(f"trainer for run {doc.name} (rank {rank}): storage {doc.storage_uri()}", file=sys.stderr)
    progress = run_trainer(doc, metrics, poll_seconds=args.poll_seconds)
    if progress is not None:
        print(format_progress(progress))
    return 0


def cmd_prefetch(args) -> int:
    """Download (or convert) the run's model into the caches named by HF_HUB_CACHE / FLOWDPO_CACHE; on a
    cluster those point into the model cache volume (spec.kubernetes.modelCache)."""
    from flowdpo.models import prefetch_model
    from flowdpo.spec import load_document

    doc = load_document(args.file)
    where = prefetch_model(doc.spec.model)
    print(f"model {doc.spec.model.name} ready at {where}")
    return 0


def cmd_metrics_proxy(args) -> int:
    """Relay the pod-local vLLM server's /metrics to Prometheus (flowdpo/metrics_proxy.py says why)."""
    from flowdpo.metrics_proxy import serve

    try:
        server = serve(args.upstream, args.metrics_port, args.metrics_addr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"relaying {args.upstream} at http://{args.metrics_addr}:{server.server_port}/metrics", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _common(p, poll_default: float) -> None:
    p.add_argument("file", help="FlowDPORun YAML")
    add_storage_option(p)
    p.add_argument("--metrics-port", type=port, help="serve Prometheus metrics on PORT")
    p.add_argument("--metrics-addr", default="0.0.0.0", help="address for --metrics-port (default 0.0.0.0: pod IP)")
    p.add_argument(
        "--poll-seconds", type=positive_seconds, default=poll_default, help="how often to look for new work"
    )


def add_subparsers(sub) -> None:
    w = sub.add_parser("worker", help="rollout worker: claim shards, run the flow, write results and pairs")
    _common(w, 2.0)
    w.add_argument(
        "--lease-seconds", type=positive_seconds, default=os.environ.get("FLOWDPO_LEASE_SECONDS", "60"),
        help="claim lease, renewed every third of it; a dead worker's shard is taken over after it "
        "(default $FLOWDPO_LEASE_SECONDS or 60)",
    )
    w.add_argument("--worker-id", help="name in claims (default: host-pid-random)")
    w.add_argument("--vllm-url", help="vLLM server for rollout.backend=vllm (default $FLOWDPO_VLLM_URL or :8000)")
    w.add_argument("--adapter-dir", help="local folder for adapter versions served by vLLM ($FLOWDPO_ADAPTER_DIR)")
    w.add_argument(
        "--linger", action="store_true",
        help="once every shard has results, stay up (idle) until the trainer finishes the run: for Deployments, "
        "which restart containers that exit",
    )
    w.set_defaults(func=cmd_worker)

    t = sub.add_parser("trainer", help="trainer service: consume finished shards in order, train, publish adapters")
    _common(t, 1.0)
    t.set_defaults(func=cmd_trainer)

    f = sub.add_parser("prefetch", help="download the run's model into the caches (HF_HUB_CACHE, FLOWDPO_CACHE)")
    f.add_argument("file", help="FlowDPORun YAML")
    f.set_defaults(func=cmd_prefetch)

    m = sub.add_parser("metrics-proxy", help="serve a pod-local /metrics page (the vLLM server's) on the pod IP, read-only")
    m.add_argument("--upstream", required=True, help="the page to relay, e.g. http://127.0.0.1:8000/metrics")
    m.add_argument("--metrics-port", type=port, required=True, help="port to serve /metrics on")
    m.add_argument("--metrics-addr", default="0.0.0.0", help="address to listen on (default 0.0.0.0: pod IP)")
    m.set_defaults(func=cmd_metrics_proxy)
