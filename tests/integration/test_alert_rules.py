"""The chart's PrometheusRule (charts/flowdpo/templates/prometheusrule.yaml), rendered by Helm and evaluated by
the REAL Prometheus rule engine: `promtool test rules` (Debian's package, scripts/testenv/prometheus.sh) replays
series shaped like the ones the operator and the workers export (flowdpo_operator.metrics, flowdpo.metrics:
the names and labels are checked against those registries below) and asserts, per alert, that it fires for the
run in trouble, with the labels and annotations an on-call person reads, and stays silent for a healthy run.
"""

from __future__ import annotations

import shutil
import subprocess

import helm_python
import pytest
import yaml

from flowdpo.metrics import Metrics
from flowdpo_operator.metrics import OperatorMetrics
from tests.support.paths import ROOT

CHART = ROOT / "charts" / "flowdpo"
NS = "team-a"  # the runs' namespace
OP = 'namespace="flowdpo-system", pod="flowdpo-operator-0"'  # target labels of the operator's series


def labels_of(registry, name: str) -> set[str]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                return set(sample.labels)
    raise AssertionError(f"{name} is not exported")


@pytest.fixture(scope="module")
def promtool() -> str:
    if shutil.which("apt-get") is None:
        pytest.skip("needs Debian's apt-get to fetch promtool (scripts/testenv/prometheus.sh)")
    script = ROOT / "scripts" / "testenv" / "prometheus.sh"
    out = subprocess.run(["bash", str(script), "promtool"], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"scripts/testenv/prometheus.sh failed:\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def rendered_groups(values: dict) -> list[dict]:
    with helm_python.Chart.load(CHART) as chart:
        out = chart.render({"prometheusRule": {"enabled": True, **values}}, name="flowdpo", namespace="flowdpo-system")
    (text,) = [t for path, t in out.items() if path.endswith("prometheusrule.yaml")]
    rule = yaml.safe_load(text)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    return rule["spec"]["groups"]


def run_promtool(promtool: str, tmp_path, groups: list[dict], tests: list[dict]) -> subprocess.CompletedProcess:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    return subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)


def describe(run: str) -> str:
    return f"kubectl describe fdr -n {NS} {run}"


def test_the_series_the_rules_read_exist_with_those_labels():
    """The input series below are shaped like the real ones: same names, same labels (plus target labels)."""
    op, pods = OperatorMetrics(), Metrics("r")
    op.set_phase(NS, "r", "Training")
    op.set_failed_pods(NS, "r", {"trainer": 1})
    op.examples.labels(NS, "r").set(3)
    pods.version_lag.labels("r", "answer").set(1)
    pods.observe_shard([{"adapter": "stop", "chosenText": "no"}])
    assert labels_of(op.registry, "flowdpo_run_phase") == {"run_namespace", "run", "phase"}
    assert labels_of(op.registry, "flowdpo_job_failed_pods") == {"run_namespace", "run", "step"}
    assert labels_of(op.registry, "flowdpo_run_examples") == {"run_namespace", "run"}
    assert labels_of(pods.registry, "flowdpo_adapter_version_lag") == {"run", "adapter"}
    assert labels_of(pods.registry, "flowdpo_stop_pairs_total") == {"run", "chosen"}


def test_every_alert_fires_for_the_run_in_trouble_only(promtool, tmp_path):
    groups = rendered_groups({})
    alerts = {r["alert"] for g in groups for r in g["rules"]}
    assert alerts == {
        "FlowDPOProgressStalled", "FlowDPOAdapterVersionLagGrowing", "FlowDPOJobPodsFailing", "FlowDPORunFailed",
        "FlowDPOStopPairsOneSided",
        "FlowDPORunStuckInPending", "FlowDPORunStuckInPreparing", "FlowDPORunStuckInCompiling",
    }
    phase = lambda run, p, values: {
        "series": f'flowdpo_run_phase{{{OP}, run_namespace="{NS}", run="{run}", phase="{p}"}}', "values": values}
    series = [
        # stalled: scores 10 examples, then nothing while Training; moving: scores one a minute.
        {"series": f'flowdpo_run_examples{{{OP}, run_namespace="{NS}", run="stalled"}}', "values": "0+1x10 10x90"},
        {"series": f'flowdpo_run_examples{{{OP}, run_namespace="{NS}", run="moving"}}', "values": "0+1x100"},
        phase("stalled", "Training", "1x100"), phase("moving", "Training", "1x100"),
        # idle: flat examples but not Training (waiting in Pending for 20 minutes only).
        {"series": f'flowdpo_run_examples{{{OP}, run_namespace="{NS}", run="idle"}}', "values": "0x100"},
        phase("idle", "Training", "0x100"), phase("idle", "Pending", "1x20 0x80"),
        # lagging: the worker falls one version further behind every minute; steady: 5 behind, not growing.
        {"series": f'flowdpo_adapter_version_lag{{namespace="{NS}", pod="lagging-rollout-0", run="lagging", adapter="answer"}}',
         "values": "0+1x100"},
        {"series": f'flowdpo_adapter_version_lag{{namespace="{NS}", pod="steady-rollout-0", run="steady", adapter="answer"}}',
         "values": "5x100"},
        # crashing: one trainer pod failed at minute 10 (the Job retries it).
        {"series": f'flowdpo_job_failed_pods{{{OP}, run_namespace="{NS}", run="crashing", step="trainer"}}',
         "values": "0x10 1x90"},
        # never-stops: one worker mines a "no" Stop pair a minute and no "yes" (both series exported from 0);
        # two workers of "balanced" mine one of each side every two minutes.
        *({"series": f'flowdpo_stop_pairs_total{{namespace="{NS}", pod="never-stops-rollout-0", run="never-stops", '
                     f'chosen="{side}"}}', "values": values} for side, values in (("no", "0+1x100"), ("yes", "0x100"))),
        *({"series": f'flowdpo_stop_pairs_total{{namespace="{NS}", pod="balanced-rollout-{i}", run="balanced", '
                     f'chosen="{side}"}}', "values": "0+0.5x100"} for i in (0, 1) for side in ("no", "yes")),
        phase("broken", "Failed", "1x100"),
        phase("queued", "Pending", "1x100"),
    ]
    severity = {"severity": "warning"}

    def fired(name, labels, summary, description):
        return {"exp_labels": {**labels, **severity}, "exp_annotations": {"summary": summary, "description": description}}

    stalled = fired(
        "FlowDPOProgressStalled", {"run_namespace": NS, "run": "stalled"},
        f"FlowDPORun {NS}/stalled scored no example for 30m",
        f"The run is Training but status.examples did not move. {describe('stalled')}; "
        f"kubectl logs -n {NS} job/stalled-trainer",
    )
    lagging = fired(
        "FlowDPOAdapterVersionLagGrowing", {"namespace": NS, "run": "lagging", "adapter": "answer"},
        f"FlowDPORun {NS}/lagging: answer adapter 30 versions behind and growing",
        "A rollout worker serves an adapter version at least 3 behind the trainer's and the gap keeps growing; "
        "see the worker logs and flowdpo_adapter_load_seconds.",
    )
    crashing = fired(
        "FlowDPOJobPodsFailing", {"run_namespace": NS, "run": "crashing", "step": "trainer"},
        f"FlowDPORun {NS}/crashing: pods of step trainer failed",
        f"kubectl logs -n {NS} job/crashing-trainer --previous; the run fails once the Job exceeds its backoffLimit.",
    )
    one_sided = fired(
        "FlowDPOStopPairsOneSided", {"namespace": NS, "run": "never-stops"},
        f"FlowDPORun {NS}/never-stops: every Stop pair mined over 1h teaches one side",
        "Only one side (see flowdpo_stop_pairs_total by chosen) is being taught, so the Stop adapter learns to "
        'always or never stop instead of when to stop; the "How answers end" panel shows its effect. flowdpo signal '
        "on the run file tells the same before training (docs: README, flowdpo signal).",
    )
    broken = fired(
        "FlowDPORunFailed", {"run_namespace": NS, "run": "broken"}, f"FlowDPORun {NS}/broken failed",
        f"{describe('broken')}: condition Failed names the step and the Job.",
    )
    queued = fired(
        "FlowDPORunStuckInPending", {"run_namespace": NS, "run": "queued"},
        f"FlowDPORun {NS}/queued has been Pending for 1h",
        f"{describe('queued')}: the conditions say what the current step waits for (a Secret, Kueue admission, "
        "a Pending pod).",
    )
    cases = [
        # minute 15: the crash is within the window; the lag has been growing for 12 minutes (< 15m `for`).
        ("FlowDPOJobPodsFailing", "15m", [crashing]),
        ("FlowDPOAdapterVersionLagGrowing", "15m", []),
        ("FlowDPOProgressStalled", "15m", []),
        ("FlowDPORunFailed", "15m", [broken]),
        # minute 15: 15 one-sided pairs (< 20); minute 30: 30 of them; "balanced" never fires.
        ("FlowDPOStopPairsOneSided", "15m", []),
        ("FlowDPOStopPairsOneSided", "30m", [one_sided]),
        ("FlowDPORunStuckInPending", "30m", []),
        # minute 30: the lag grew for more than 15 minutes.
        ("FlowDPOAdapterVersionLagGrowing", "30m", [lagging]),
        # minute 50: no change for 30m since minute 10 holds from minute 40, not yet for 30m.
        ("FlowDPOProgressStalled", "50m", []),
        ("FlowDPOJobPodsFailing", "50m", []),  # no new failure in the last 15 minutes
        # minute 75: stalled for 65 minutes; queued Pending for more than an hour (idle only for 20 minutes).
        ("FlowDPOProgressStalled", "75m", [stalled]),
        ("FlowDPORunStuckInPending", "75m", [queued]),
        ("FlowDPORunStuckInPreparing", "75m", []),
        ("FlowDPORunStuckInCompiling", "75m", []),
    ]
    tests = [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": exp} for a, t, exp in cases],
    }]
    out = run_promtool(promtool, tmp_path, groups, tests)
    assert out.returncode == 0, f"promtool test rules:\n{out.stdout}\n{out.stderr}"
    assert "SUCCESS" in out.stdout
    # The test can fail: claim the healthy run stalls too, and promtool must disagree.
    wrong = [{**tests[0], "alert_rule_test": [{"eval_time": "75m", "alertname": "FlowDPOProgressStalled",
                                                "exp_alerts": [stalled, {**stalled, "exp_labels": {
                                                    **stalled["exp_labels"], "run": "moving"}}]}]}]
    assert run_promtool(promtool, tmp_path, groups, wrong).returncode != 0


def test_thresholds_come_from_the_values(promtool, tmp_path):
    groups = rendered_groups({"stalledFor": "10m", "versionLag": 50, "stuckPhases": {"Pending": "5m"}, "severity": "page"})
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rules) >= {"FlowDPORunStuckInPending"} and rules["FlowDPOProgressStalled"]["for"] == "10m"
    assert all(r["labels"]["severity"] == "page" for r in rules.values())
    series = [{"series": f'flowdpo_adapter_version_lag{{namespace="{NS}", run="lagging", adapter="stop"}}',
               "values": "0+1x60"}]
    tests = [{"interval": "1m", "input_series": series, "alert_rule_test": [
        # lag 30 is growing but below versionLag 50: silent.
        {"eval_time": "30m", "alertname": "FlowDPOAdapterVersionLagGrowing", "exp_alerts": []}]}]
    out = run_promtool(promtool, tmp_path, groups, tests)
    assert out.returncode == 0, f"promtool test rules:\n{out.stdout}\n{out.stderr}"
