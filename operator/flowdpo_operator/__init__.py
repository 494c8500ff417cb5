"""The flowdpo Kubernetes operator: reconciles FlowDPORun resources into prepare / rollout / trainer /
compile workloads and mirrors the run's progress.json into the resource's status."""
