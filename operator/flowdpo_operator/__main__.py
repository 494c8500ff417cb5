"""`flowdpo-operator` (or `python -m flowdpo_operator`): run the FlowDPORun operator (kopf).

    flowdpo-operator [--all-namespaces | --namespace NS ...] [--liveness-port 8080] [--metrics-port 9400]
                     [--resync-seconds 10] [--ambient-storage-credentials] [--verbose]

Logs in with $KUBECONFIG when it is set (a developer machine, tests), else with the pod's ServiceAccount.
With --peering NAME it joins kopf's peering object NAME with a random priority (the chart does so), so a second
operator process serving the same runs freezes; without, it runs standalone.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys

from flowdpo.cli.arguments import any_int, port_or_off, positive_seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowdpo-operator",
        description="Kubernetes operator for FlowDPORun: runs prepare / rollout / trainer / compile / eval "
        "workloads and mirrors progress.json into the run's status.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], metavar="NS",
        help="serve FlowDPORuns of this namespace (repeatable); default: all namespaces",
    )  # fmt: skip
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace (the default)")
    p.add_argument(
        "--liveness-port", type=port_or_off, default=8080, help="serve http://0.0.0.0:PORT/healthz (0: off; default 8080)"
    )
    p.add_argument(
        "--metrics-port", type=port_or_off, default=0, help="serve the operator's Prometheus metrics on PORT (0: off)"
    )
    p.add_argument(
        "--resync-seconds",
        type=positive_seconds,
        default=os.environ.get("FLOWDPO_OPERATOR_RESYNC_SECONDS", "10"),
        help="how often each run's Jobs and progress.json are observed "
        "(default $FLOWDPO_OPERATOR_RESYNC_SECONDS or 10)",
    )
    p.add_argument(
        "--ambient-storage-credentials",
        action="store_true",
        default=os.environ.get("FLOWDPO_AMBIENT_STORAGE_CREDENTIALS", "") == "true",
        help="read the storage of runs that name no Secret with the operator's own identity (environment, "
        "workload identity, instance metadata); off by default: runs must name a Secret to be mirrored",
    )
    p.add_argument(
        "--allowed-image", action="append", default=[], metavar="PREFIX",
        help="images run pods may use (repeatable; a prefix ending in '/' or ':' allows a registry path or a "
        "repository's tags); default: any. Creating a FlowDPORun creates pods with the images it names",
    )  # fmt: skip
    p.add_argument(
        "--peering", metavar="NAME", default=os.environ.get("FLOWDPO_PEERING") or None,
        help="kopf peering object to join (ClusterKopfPeering with --all-namespaces, KopfPeering per namespace): "
        "of the operators sharing it only the highest priority acts; default: standalone",
    )  # fmt: skip
    p.add_argument(
        "--priority", type=any_int, default=None,
        help="peering priority (default: random, so that two operators never tie; kopf freezes all on a tie)",
    )  # fmt: skip
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Heavy imports after argument parsing: `--help` answers at once.
    import kopf

    from flowdpo_operator.metrics import OperatorMetrics

    from .controller import Controller
    from .handlers import OperatorOptions, register
    from .k8s import Cluster, api_client_from_environment

    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per liveness probe otherwise
    try:
        api = api_client_from_environment()
    except Exception as e:  # noqa: BLE001 - a broken kubeconfig raises several types; all are fatal here
        print(f"flowdpo-operator: cannot configure the Kubernetes client: {e}", file=sys.stderr)
        return 2
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    options = OperatorOptions(resync_seconds=args.resync_seconds, retry_seconds=max(2.0, args.resync_seconds))
    registry = kopf.OperatorRegistry()
    controller = Controller(
        Cluster(api),
        metrics,
        ambient_credentials=args.ambient_storage_credentials,
        allowed_images=tuple(args.allowed_image),
    )
    register(registry, controller, options)
    priority = args.priority if args.priority is not None else random.SystemRandom().randint(1, 2**31 - 1)
    kopf.run(
        registry=registry,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
