"""The run state machine over observed worlds: each phase transition, suspend/resume, Job failure and retry,
invalid and changed specs, and the restart property (same world -> no new creates, unchanged status -> no
write). A small in-memory `World` plays the API server: it applies the decided actions to its objects."""

from __future__ import annotations

import copy

import pytest
import yaml

from flowdpo_operator import builders, k8s
from flowdpo_operator.reconcile import RunState, is_settled, reconcile
from flowdpo_operator.status import condition
from flowdpo_operator.status_model import RunStatus
from flowdpo_operator.validation import validate
from flowdpo_operator.world import Create, Observed, ObservedStorage, Replace
from tests.support.operator_support import NAMESPACE, OWNER, merge, run_body

T0, T1 = "2030-01-01T00:00:00Z", "2030-01-01T00:05:00Z"


def progress(phase="Training", examples=8, total=16, answer=3, stop=1, versions=(2, 1), accuracy=0.5):
    return {
        "run": "demo",
        "phase": phase,
        "examples": examples,
        "examplesTotal": total,
        "correct": int(examples * (accuracy or 0)),
        "progressiveAccuracy": accuracy,
        "pairs": {"answer": {"mined": answer, "trained": answer}, "stop": {"mined": stop, "trained": 0}},
        "adapterVersions": {"answer": versions[0], "stop": versions[1]},
        "shards": {"total": 4, "consumed": 2},
        "etaSeconds": None,  # progress.json has nulls (no rate yet, baselines off, ...)
        "baselines": {"zero-shot": {"examples": 0, "correct": 0, "accuracy": None}},
    }


def merge_patched(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies the operator's status patch (null deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patched(out.get(key), value)
    return out


class World:
    """Objects keyed by (kind, name), progress.json, the run's status; `tick()` = one reconcile + apply."""

    def __init__(self, spec_patch=None, *, progress_json=None, secret_missing=False):
        self.body = run_body(spec_patch)
        self.objects: dict[tuple[str, str], dict] = {}
        self.progress = progress_json
        self.secret_missing = secret_missing
        self.writes = 0  # status writes
        self._rv = 0

    def edit(self, spec_patch):
        self.body["spec"] = merge(self.body["spec"], spec_patch)
        self.body["metadata"]["generation"] += 1

    @property
    def status(self):
        return self.body.get("status", {})

    def observe(self) -> Observed:
        def get(kind, component):
            return self.objects.get((kind, builders.child_name("demo", component)))

        jobs = {s: k8s.observe_job(o) for s in builders.JOB_STEPS if (o := get("Job", s))}
        cm, dep = get("ConfigMap", "config"), get("Deployment", "rollout")
        storage = ObservedStorage(secret_missing=True) if self.secret_missing else ObservedStorage(
            reachable=True, progress=self.progress
        )
        return Observed(
            config=k8s.observe_config_map(cm) if cm else None,
            rollout=k8s.observe_deployment(dep) if dep else None,
            jobs=jobs,
            storage=storage,
        )

    def decide(self, now=T0):
        run = RunState(OWNER, self.body["metadata"]["generation"], self.status, validate(self.body))
        decision = reconcile(run, self.observe(), now=now)
        # Every status the reconciler writes is one the CRD's status schema describes (both come from
        # RunStatus): an unknown or mistyped field fails here, in every scenario of this module.
        RunStatus.model_validate(decision.status)
        return decision

    def tick(self, now=T0):
        decision = self.decide(now)
        for action in decision.actions:
            if isinstance(action, Create):
                key = (action.body["kind"], action.body["metadata"]["name"])
                assert key not in self.objects, f"created twice: {key}"
                self._store(action.body)
            elif isinstance(action, Replace):
                key = (action.body["kind"], action.body["metadata"]["name"])
                assert action.body["metadata"]["resourceVersion"] == self.objects[key]["metadata"]["resourceVersion"]
                self._store(action.body)
            else:
                del self.objects[(action.kind, action.name)]
        if decision.status_changed:
            self.writes += 1
            self.body["status"] = merge_patched(self.status, decision.status)
        return decision

    def _store(self, body):
        self._rv += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[(body["kind"], body["metadata"]["name"])] = body

    def job(self, step):
        return self.objects.get(("Job", f"demo-{step}"))

    def finish(self, step, *, failed=False):
        kind = "Failed" if failed else "Complete"
        extra = {"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
        self.job(step)["status"] = {"conditions": [{"type": kind, "status": "True", **(extra if failed else {})}]}

    def deployment(self):
        return self.objects.get(("Deployment", "demo-rollout"))

    def cond(self, type_):
        return condition(self.status, type_)

    def names(self):
        return sorted(f"{kind}/{name}" for kind, name in self.objects)


def kinds(actions):
    return sorted(
        f"{type(a).__name__}:{a.body['metadata']['name'] if hasattr(a, 'body') else a.name}" for a in actions
    )


def train_to_completion(w):
    w.tick()
    w.finish("prepare")
    w.tick()
    w.progress = progress()
    w.tick()
    w.finish("trainer")
    w.progress = progress(phase="Succeeded", examples=16)
    return w.tick()


class TestPhases:
    def test_a_new_run_gets_its_config_and_prepare_job(self):
        w = World()
        d = w.tick()
        assert kinds(d.actions) == ["Create:demo-config", "Create:demo-prepare"]
        assert w.status["phase"] == "Preparing" and w.status["observedGeneration"] == 1
        assert w.cond("Valid")["status"] == "True" and w.cond("Prepared")["reason"] == "InProgress"
        assert w.cond("Trained")["reason"] == "NotStarted"
        assert [(e.type, e.reason) for e in d.events] == [("Normal", "Preparing")]

    def test_prepared_starts_training_with_trainer_and_rollout(self):
        w = World({"rollout": {"replicas": 3}})
        w.tick()
        w.finish("prepare")
        d = w.tick()
        assert kinds(d.actions) == ["Create:demo-rollout", "Create:demo-trainer"]
        assert w.status["phase"] == "Training" and w.cond("Prepared")["status"] == "True"
        assert w.deployment()["spec"]["replicas"] == 3

    def test_progress_is_mirrored_into_status(self):
        w = World()
        w.tick()
        w.finish("prepare")
        w.tick()
        w.progress = progress(examples=12, answer=30, stop=7, versions=(5, 3), accuracy=0.625)
        w.tick()
        s = w.status
        assert (s["examples"], s["examplesTotal"], s["progressiveAccuracy"]) == (12, 16, 0.625)
        assert s["pairs"] == {"answer": {"mined": 30, "trained": 30}, "stop": {"mined": 7, "trained": 0}}
        assert s["pairsTotal"] == 37 and s["adapterVersions"] == {"answer": 5, "stop": 3}
        assert s["adapterVersion"] == "a5/s3"
        assert s["progress"]["shards"] == {"total": 4, "consumed": 2} and "run" not in s["progress"]
        assert "12/16 examples" in w.cond("Trained")["message"]

    def test_adapters_in_sync_condition_follows_the_workers_canary_checks(self):
        w = World()
        w.tick()
        w.finish("prepare")
        w.tick()
        w.progress = progress()
        w.tick()
        assert w.cond("AdaptersInSync") is None  # no worker has checked a load yet
        w.progress = {**progress(), "adaptersInSync": {"inSync": True, "workers": 2, "notInSync": [], "maxDeviation": 0.04}}
        w.tick()
        assert w.cond("AdaptersInSync")["status"] == "True" and "2 worker(s)" in w.cond("AdaptersInSync")["message"]
        w.progress = {**progress(), "adaptersInSync": {"inSync": False, "workers": 2, "notInSync": ["w7"], "maxDeviation": 0.9}}
        w.tick()
        c = w.cond("AdaptersInSync")
        assert c["status"] == "False" and c["reason"] == "CanaryMismatch" and "w7" in c["message"] and "0.9" in c["message"]

    def test_trainer_complete_waits_for_progress_json_to_say_succeeded(self):
        w = World()
        w.tick()
        w.finish("prepare")
        w.tick()
        w.finish("trainer")
        w.progress = progress(phase="Training")
        d = w.tick()
        assert w.status["phase"] == "Training" and d.actions == ()
        assert "waiting for progress.json to say Succeeded (it says Training)" in w.cond("Trained")["message"]

    def test_trained_frees_the_rollout_and_starts_compile_then_eval_then_succeeds(self):
        w = World()
        d = train_to_completion(w)
        assert kinds(d.actions) == ["Create:demo-compile", "Delete:demo-rollout"]
        assert w.status["phase"] == "Compiling" and w.cond("Trained")["status"] == "True"
        assert "16/16 examples" in w.cond("Trained")["message"]
        w.finish("compile")
        assert kinds(w.tick().actions) == ["Create:demo-eval"]
        assert w.status["phase"] == "Compiling" and w.cond("Compiled")["status"] == "True"
        w.finish("eval")
        d = w.tick()
        assert d.actions == () and w.status["phase"] == "Succeeded"
        assert w.cond("Evaluated")["status"] == "True" and w.cond("Succeeded")["status"] == "True"
        assert is_settled(w.status, generation=1) and not is_settled(w.status, generation=2)
        assert [e.reason for e in d.events] == ["Succeeded"]

    def test_without_run_compile_training_is_the_last_step(self):
        w = World({"kubernetes": {"runCompile": False}})
        d = train_to_completion(w)
        assert kinds(d.actions) == ["Delete:demo-rollout"]
        assert w.status["phase"] == "Succeeded" and w.cond("Compiled") is None

    def test_finished_steps_stay_done_when_their_jobs_are_deleted(self):
        w = World()
        train_to_completion(w)
        del w.objects[("Job", "demo-prepare")], w.objects[("Job", "demo-trainer")]
        d = w.tick()
        assert d.actions == () and w.status["phase"] == "Compiling"


class TestFailure:
    @pytest.mark.parametrize("step", ["prepare", "trainer", "compile", "eval"])
    def test_a_failed_job_fails_the_run_and_says_where_to_look(self, step):
        w = World()
        w.tick()
        for done in ["prepare", "trainer", "compile", "eval"][: ["prepare", "trainer", "compile", "eval"].index(step)]:
            if done == "trainer":
                w.progress = progress(phase="Succeeded", examples=16)
            w.finish(done)
            w.tick()
        w.finish(step, failed=True)
        d = w.tick()
        assert w.status["phase"] == "Failed"
        failed = w.cond("Failed")
        assert failed["status"] == "True" and failed["reason"] == f"{step.capitalize()}Failed"
        assert f"kubectl logs -n {NAMESPACE} job/demo-{step}" in failed["message"]
        assert "BackoffLimitExceeded" in failed["message"]
        assert [(e.type, e.reason) for e in d.events] == [("Warning", failed["reason"])]
        assert not any(isinstance(a, Create) for a in d.actions)
        assert w.deployment() is None  # no GPUs held by a failed run
        assert w.tick().actions == ()  # stays failed, nothing recreated

    def test_deleting_the_failed_job_retries_the_step(self):
        w = World()
        w.tick()
        w.finish("prepare")
        w.tick()
        w.finish("trainer", failed=True)
        w.tick()
        assert w.status["phase"] == "Failed" and w.deployment() is None
        del w.objects[("Job", "demo-trainer")]
        d = w.tick(now=T1)
        assert kinds(d.actions) == ["Create:demo-rollout", "Create:demo-trainer"]
        assert w.status["phase"] == "Training"
        assert w.cond("Failed")["status"] == "False" and w.cond("Failed")["lastTransitionTime"] == T1


class TestSuspend:
    def training_world(self):
        w = World({"rollout": {"replicas": 2}})
        w.tick()
        w.finish("prepare")
        w.tick()
        return w

    def test_suspend_scales_rollout_to_zero_and_deletes_the_running_job(self):
        w = self.training_world()
        w.edit({"suspend": True})
        d = w.tick(now=T1)
        assert kinds(d.actions) == ["Delete:demo-trainer", "Replace:demo-rollout"]
        assert w.deployment()["spec"]["replicas"] == 0 and w.job("trainer") is None
        assert w.status["phase"] == "Training" and w.status["observedGeneration"] == 2
        suspended = w.cond("Suspended")
        assert (suspended["status"], suspended["lastTransitionTime"]) == ("True", T1)
        assert w.cond("Trained")["reason"] == "Suspended"
        assert w.tick(now=T1).actions == ()  # suspended and quiet

    def test_resume_recreates_the_job_and_scales_back(self):
        w = self.training_world()
        w.edit({"suspend": True})
        w.tick()
        w.edit({"suspend": False})
        d = w.tick(now=T1)
        assert kinds(d.actions) == ["Create:demo-trainer", "Replace:demo-rollout"]
        assert w.deployment()["spec"]["replicas"] == 2
        assert w.cond("Suspended")["status"] == "False" and w.cond("Trained")["reason"] == "InProgress"

    def test_resume_waits_for_the_old_job_to_be_gone(self):
        w = self.training_world()
        w.job("trainer")["metadata"]["deletionTimestamp"] = T0  # foreground deletion in progress
        d = w.tick()
        assert d.actions == ()
        assert "being deleted" in w.cond("Trained")["message"]

    def test_suspended_before_start_is_pending_with_only_the_config(self):
        w = World({"suspend": True})
        d = w.tick()
        assert kinds(d.actions) == ["Create:demo-config"] and w.status["phase"] == "Pending"
        w.edit({"suspend": False})
        assert kinds(w.tick().actions) == ["Create:demo-prepare"] and w.status["phase"] == "Preparing"

    def test_suspend_while_preparing_keeps_the_phase(self):
        w = World()
        w.tick()
        w.edit({"suspend": True})
        assert kinds(w.tick().actions) == ["Delete:demo-prepare"]
        assert w.status["phase"] == "Preparing"


class TestInvalidSpec:
    def test_invalid_spec_fails_without_children_and_names_the_field(self):
        w = World({"storage": {"uri": "file:///data/runs/{name}"}})
        d = w.tick()
        assert d.actions == () and w.objects == {}
        assert w.status["phase"] == "Failed" and d.invalid
        valid = w.cond("Valid")
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
        assert valid["message"].startswith("spec.storage.uri:")
        assert w.cond("Failed")["reason"] == "InvalidSpec"
        assert [(e.type, e.reason) for e in d.events] == [("Warning", "InvalidSpec")]

    def test_fixing_the_spec_starts_the_run(self):
        w = World({"storage": {"uri": "file:///data/runs/{name}"}})
        w.tick()
        w.edit({"storage": {"uri": "s3://bucket/runs/{name}"}})
        d = w.tick(now=T1)
        assert kinds(d.actions) == ["Create:demo-config", "Create:demo-prepare"]
        assert w.status["phase"] == "Preparing" and w.cond("Failed")["status"] == "False"

    def test_changing_a_training_field_mid_run_is_refused(self):
        w = World()
        w.tick()
        w.finish("prepare")
        w.tick()
        w.edit({"lora": {"r": 32}})
        d = w.tick()
        assert d.actions == () and w.status["phase"] == "Failed"
        assert w.cond("Valid")["message"].startswith("spec.lora.r: cannot change after the run started")
        stored = yaml.safe_load(w.objects[("ConfigMap", "demo-config")]["data"]["run.yaml"])
        assert stored["spec"]["lora"]["r"] == 8  # the pods keep the spec they started with
        w.edit({"lora": {"r": 8}})
        w.tick()
        assert w.status["phase"] == "Training"

    def test_changing_an_operational_field_replaces_the_config_and_rollout(self):
        w = World()
        w.tick()
        w.finish("prepare")
        w.tick()
        w.edit({"kubernetes": {"image": "example.org/flowdpo-trainer:0.2.0"}})
        d = w.tick()
        assert kinds(d.actions) == ["Replace:demo-config", "Replace:demo-rollout"]
        worker = w.deployment()["spec"]["template"]["spec"]["containers"][0]
        assert worker["image"] == "example.org/flowdpo-trainer:0.2.0"


class TestWaiting:
    def test_missing_secret_blocks_creation_and_says_so(self):
        w = World(secret_missing=True)
        d = w.tick()
        assert d.actions == () and d.blocked and w.status["phase"] == "Pending"
        storage = w.cond("StorageReady")
        assert (storage["status"], storage["reason"]) == ("False", "SecretNotFound")
        assert "'flowdpo-storage'" in storage["message"] and NAMESPACE in storage["message"]
        w.secret_missing = False
        assert kinds(w.tick().actions) == ["Create:demo-config", "Create:demo-prepare"]

    def test_storage_errors_are_reported_but_do_not_stop_the_pods(self):
        w = World()
        w.tick()
        w.finish("prepare")
        obs = w.observe()
        unreachable = Observed(config=obs.config, rollout=obs.rollout, jobs=obs.jobs,
                               storage=ObservedStorage(reachable=False, error="ConnectionRefused"))  # fmt: skip
        run = RunState(OWNER, 1, w.status, validate(w.body))
        d = reconcile(run, unreachable, now=T0)
        assert kinds(d.actions) == ["Create:demo-rollout", "Create:demo-trainer"]
        assert condition(d.status, "StorageReady")["reason"] == "StorageError"
        assert "ConnectionRefused" in condition(d.status, "StorageReady")["message"]

    def test_children_of_an_earlier_run_with_the_same_name_block_creation(self):
        w = World()
        obs = Observed(foreign=("Job demo-prepare",), storage=ObservedStorage(reachable=True))
        d = reconcile(RunState(OWNER, 1, {}, validate(w.body)), obs, now=T0)
        assert d.actions == () and "Job demo-prepare" in d.blocked and d.status["phase"] == "Pending"


class TestRestart:
    def test_same_world_gives_no_new_actions_and_no_status_write(self):
        w = World()
        w.tick()
        w.finish("prepare")
        w.progress = progress(accuracy=None)  # nulls must not make every tick a write
        w.tick()
        writes = w.writes
        for now in (T0, T1):  # a restarted operator, later
            d = w.tick(now=now)
            assert d.actions == () and not d.status_changed and d.events == ()
        assert w.writes == writes

    def test_a_fresh_operator_with_an_empty_status_adopts_the_world(self):
        w = World()
        train_to_completion(w)
        w.body.pop("status")  # e.g. the status was lost; the children tell the story
        d = w.tick()
        assert d.actions == () and w.status["phase"] == "Compiling"

    def test_transition_times_change_only_when_a_condition_flips(self):
        w = World()
        w.tick(now=T0)
        w.finish("prepare")
        w.tick(now=T1)
        assert w.cond("Valid")["lastTransitionTime"] == T0  # still True since T0
        assert w.cond("Prepared")["lastTransitionTime"] == T1  # became True at T1
        assert w.cond("Trained")["lastTransitionTime"] == T0  # False since T0 (NotStarted -> InProgress)


def test_the_status_model_refuses_what_the_crd_would_not_describe():
    with pytest.raises(ValueError):
        RunStatus.model_validate({"phase": "Running"})  # not a phase
    with pytest.raises(ValueError):
        RunStatus.model_validate({"phase": "Training", "accuracy": 0.5})  # not a field of the status
    with pytest.raises(ValueError):
        RunStatus.model_validate({"conditions": [{"type": "Valid", "status": "Yes"}]})
