"""A whole tiny run on the cluster: `kubectl apply` -> Pending -> Preparing -> Training -> Compiling ->
Succeeded. The fake kubelet runs prepare, worker, trainer, compile and eval as local processes in separate
sandboxes; they share nothing but the moto S3 endpoint. The operator is killed (SIGKILL) and restarted while
the run trains: it must adopt what exists, create no duplicates, and still finish the run.
"""

from __future__ import annotations

import pytest

from e2e.support.runs import COMPONENT_LABEL, PhaseRecorder, children, kubectl_apply, tiny_run
from e2e.support.s3 import create_storage_secret, read_json
from e2e.support.waiting import equals, run_phase, run_status
from flowdpo.storage import RunLayout

pytestmark = pytest.mark.e2e

STEPS = ("prepare", "rollout", "trainer", "compile", "eval")


def test_tiny_run_goes_from_pending_to_succeeded_and_survives_an_operator_restart(
    control_plane, kube_api, kubelet, moto_s3, namespace, operator, wait, tmp_path
):
    secret = create_storage_secret(kube_api, namespace, moto_s3)
    uri = moto_s3.uri(namespace)
    with PhaseRecorder(kube_api, namespace, "tiny") as recorder:
        applied = kubectl_apply(control_plane, namespace, tiny_run("tiny", uri, secret), tmp_path)
        assert applied.returncode == 0, applied.stderr
        wait(run_phase(kube_api, namespace, "tiny"), equals("Training"), timeout=300, unless=equals("Failed"))

        before = {o["metadata"]["name"]: o["metadata"]["uid"]
                  for objs in children(kube_api, namespace, "tiny").values() for o in objs}
        operator.kill()
        operator.start()

        wait(run_phase(kube_api, namespace, "tiny"), equals("Succeeded"), timeout=1200, unless=equals("Failed"))

    assert [p for p in recorder.phases if p != "Pending"] == ["Preparing", "Training", "Compiling", "Succeeded"]
    assert recorder.phases.count("Pending") <= 1 and recorder.phases[0] in ("Pending", "Preparing")

    # No duplicates after the restart: one child per step, the ones from before the restart kept (the rollout
    # Deployment is deleted once training is done, to free its GPUs for compile).
    after = children(kube_api, namespace, "tiny")
    assert sorted(o["metadata"]["name"] for o in after["Job"]) == ["tiny-compile", "tiny-eval", "tiny-prepare",
                                                                  "tiny-trainer"]
    assert [o["metadata"]["name"] for o in after["ConfigMap"]] == ["tiny-config"]
    assert after["Deployment"] == []
    for obj in after["Job"] + after["ConfigMap"]:
        name = obj["metadata"]["name"]
        assert before.get(name, obj["metadata"]["uid"]) == obj["metadata"]["uid"], f"{name} was recreated"
        if obj["kind"] == "Job":
            assert obj["status"].get("succeeded") == 1, f"{name}: {obj['status']}"
    assert {"tiny-config", "tiny-prepare", "tiny-trainer"} <= set(before)

    # Every step ran as its own process; they exchanged data only through S3.
    ran = {w.pod["metadata"]["labels"].get(COMPONENT_LABEL) for w in kubelet.workers(namespace)}
    assert set(STEPS) <= ran, ran

    # The status mirrors what the trainer published in S3.
    progress = read_json(moto_s3, uri, RunLayout.progress)
    assert progress is not None and progress["phase"] == "Succeeded"
    status = run_status(kube_api, namespace, "tiny")()
    assert status["examples"] == status["examplesTotal"] == progress["examples"] == 6
    assert status["progressiveAccuracy"] == progress["progressiveAccuracy"]
    assert {a: p["mined"] for a, p in status["pairs"].items()} == {a: p["mined"] for a, p in progress["pairs"].items()}
    assert status["pairsTotal"] == sum(p["mined"] for p in progress["pairs"].values())
    assert status["adapterVersions"] == progress["adapterVersions"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert {conditions[t] for t in ("Prepared", "Trained", "Compiled", "Evaluated", "Succeeded")} == {"True"}
    # compile and eval wrote their results next to the training data.
    assert read_json(moto_s3, uri, RunLayout.compile_manifest)["tracesPerSource"] >= 1
    assert read_json(moto_s3, uri, RunLayout.eval_table_json) is not None

    # `kubectl get fdr` shows the run through the CRD's printer columns.
    got = control_plane.kubectl("-n", namespace, "get", "fdr", "tiny", check=True).stdout
    print(got)
    header, line = got.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "ACCURACY", "EXAMPLES", "PAIRS", "ADAPTER", "AGE"]
    cols = line.split()
    assert cols[:2] == ["tiny", "Succeeded"]
    assert float(cols[2]) == pytest.approx(progress["progressiveAccuracy"], abs=1e-6)
    assert cols[3:6] == [str(progress["examples"]), str(status["pairsTotal"]), status["adapterVersion"]]
