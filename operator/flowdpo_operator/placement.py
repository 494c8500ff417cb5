"""What of a child depends on the cluster rather than on the run: placement, Kueue, Job policy, the model cache.

Pure functions over the validated spec and the API server's version (`world.ServerVersion`), used by
`builders`:

- placement of a pod (`pod_placement`): nodeSelector, tolerations, affinity, priorityClassName;
- Kueue (`kueue_labels`): `kueue.x-k8s.io/queue-name` (and the WorkloadPriorityClass label) on every Job and
  on the rollout Deployment and its pods. A Kueue-managed Job is created with `spec.suspend: true`: Kueue
  unsuspends it when it admits it (docs/kubernetes.md: how the trainer Job and the rollout are admitted);
- Job policy (`job_policy`): activeDeadlineSeconds, ttlSecondsAfterFinished (1.21+), podFailurePolicy
  (1.26+), each only where the server has the field: an older server would drop it silently;
- the model cache (`model_cache_*`): a PersistentVolumeClaim mounted at /models, read-write in the prefetch
  Job and read-only with HF_HUB_OFFLINE=1 in the pods that load the model (trainer, rollout workers and vLLM
  servers), so the weights are downloaded once per volume instead of once per pod.
"""

from __future__ import annotations

from typing import Any

from flowdpo.spec import KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL, PodOptions, RunDocument

from .world import ServerVersion

MODEL_CACHE_DIR = "/models"
MODEL_CACHE_VOLUME = "model-cache"
# Inside the volume: the Hugging Face hub cache (hub ids) and flowdpo's cache (built-in models, converted once).
HUB_CACHE = f"{MODEL_CACHE_DIR}/hub"
FLOWDPO_CACHE = f"{MODEL_CACHE_DIR}/flowdpo"
# The components whose pods read the weights from the cache (compile/eval also download eval datasets from the
# hub, which HF_HUB_OFFLINE would forbid: they keep their own download).
MODEL_CACHE_READERS = ("trainer", "rollout")
PREFETCH = "weights"  # the prefetch Job's step and component: Job <run>-weights


def pod_placement(options: PodOptions) -> dict[str, Any]:
    """The scheduling fields of a pod spec that `options` sets (none when it sets none)."""
    spec: dict[str, Any] = {}
    if options.node_selector:
        spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        spec["tolerations"] = [dict(t) for t in options.tolerations]
    if options.affinity:
        spec["affinity"] = dict(options.affinity)
    if options.priority_class_name:
        spec["priorityClassName"] = options.priority_class_name
    return spec


def kueue_managed(doc: RunDocument) -> bool:
    return doc.spec.kubernetes.queue_name is not None


def kueue_labels(doc: RunDocument) -> dict[str, str]:
    """Labels that submit a workload to Kueue: on Jobs, the rollout Deployment and its pod template (Kueue's
    pod integration reads the pods' own label; its Deployment integration the Deployment's)."""
    k = doc.spec.kubernetes
    if k.queue_name is None:
        return {}
    out = {KUEUE_QUEUE_LABEL: k.queue_name}
    if k.workload_priority_class:
        out[KUEUE_PRIORITY_LABEL] = k.workload_priority_class
    return out


def job_policy(doc: RunDocument, options: PodOptions, server: ServerVersion) -> dict[str, Any]:
    """Job spec fields beyond backoffLimit: deadline, TTL, pod failure policy and the initial suspend."""
    jobs = doc.spec.kubernetes.jobs
    spec: dict[str, Any] = {}
    if options.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = options.active_deadline_seconds
    if jobs.ttl_seconds_after_finished is not None and server.has_job_ttl:
        spec["ttlSecondsAfterFinished"] = jobs.ttl_seconds_after_finished
    rules: list[dict[str, Any]] = []
    if jobs.ignore_disruptions:
        rules.append({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]})
    if jobs.fail_on_exit_codes:
        rules.append({"action": "FailJob", "onExitCodes": {"operator": "In", "values": list(jobs.fail_on_exit_codes)}})
    if rules and server.has_pod_failure_policy:
        spec["podFailurePolicy"] = {"rules": rules}
    if kueue_managed(doc) and server.has_job_suspend:
        spec["suspend"] = True  # Kueue admits it (and unsuspends it) when the queue has quota
    return spec


def model_cache_volume(doc: RunDocument, *, writable: bool) -> list[dict[str, Any]]:
    cache = doc.spec.kubernetes.model_cache
    if cache is None:
        return []
    claim = {"claimName": cache.claim_name, **({} if writable else {"readOnly": True})}
    return [{"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": claim}]


def model_cache_mount(doc: RunDocument, *, writable: bool) -> list[dict[str, Any]]:
    cache = doc.spec.kubernetes.model_cache
    if cache is None:
        return []
    mount: dict[str, Any] = {"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_DIR, "readOnly": not writable}
    if cache.sub_path:
        mount["subPath"] = cache.sub_path
    return [mount]


def model_cache_env(doc: RunDocument, *, writable: bool) -> dict[str, str]:
    """Where the weights are: the hub cache and flowdpo's cache inside the volume; readers never download."""
    if doc.spec.kubernetes.model_cache is None:
        return {}
    env = {"HF_HUB_CACHE": HUB_CACHE, "FLOWDPO_CACHE": FLOWDPO_CACHE}
    if not writable:
        env["HF_HUB_OFFLINE"] = "1"
    return env
