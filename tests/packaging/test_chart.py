"""The Helm chart charts/flowdpo, linted and rendered offline with helm-python-sdk (the Helm v4 SDK).

Rendered manifests are checked for what a cluster admin relies on: the operator's command and flags, a
non-root read-only container, RBAC that grants exactly the operator's needs (cluster-wide only for the
CRD/namespace discovery kopf does, per namespace when `watchNamespaces` is set), the generated CRD, the
Grafana dashboard ConfigMaps (every file of dashboards/, byte for byte) and the optional Prometheus Operator
monitors.
e2e/ installs the same chart on a real control plane and runs the operator under its ServiceAccount.
"""

from __future__ import annotations

import helm_python
import pytest
import yaml

from tests.support.paths import ROOT

CHART = ROOT / "charts" / "flowdpo"
RELEASE, NAMESPACE = "flowdpo", "flowdpo-system"
KUBE_VERSION = "v1.20.2"  # the e2e control plane's version (e2e/)

# The operator's needs on namespaced resources (operator/README.md): (API group, resource) -> verbs.
RUN_RULES = {
    ("flowdpo.dev", "flowdporuns"): {"get", "list", "watch", "patch"},
    ("flowdpo.dev", "flowdporuns/status"): {"patch"},
    ("", "configmaps"): {"get", "create", "update"},
    ("batch", "jobs"): {"get", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "create", "update", "delete"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}
# kopf lists and watches these cluster-wide even when it serves one namespace.
DISCOVERY_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
# kopf peering (peering.enabled, the default): the peering object of the operator's scope.
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
NAMESPACED_PEERING = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
SAMPLE_RUN = CHART.parent.parent / "examples" / "k8s" / "quickstart.yaml"
VLLM_SAMPLE_RUN = CHART.parent.parent / "examples" / "k8s" / "llama3-8b-metamathqa.yaml"


def run_pod_templates(sample=SAMPLE_RUN) -> dict[str, dict]:
    """The pod templates the operator builds for a cluster sample run, by component (its real builders)."""
    from flowdpo.spec import load_document
    from flowdpo_operator import builders

    doc = load_document(sample)
    owner = builders.Owner(doc.name, "team-a", "0000-uid")
    pods = {step: builders.job(doc, owner, step)["spec"]["template"] for step in builders.JOB_STEPS}
    pods["rollout"] = builders.rollout_deployment(doc, owner)["spec"]["template"]
    return pods


@pytest.fixture(scope="module")
def chart():
    with helm_python.Chart.load(CHART) as c:
        yield c


class Manifests:
    """A rendered release: every object, looked up by kind (and name)."""

    def __init__(self, rendered: dict[str, str]):
        self.notes = rendered.pop(f"{RELEASE}/templates/NOTES.txt", "")
        self.objects = [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
        )
        return found[0]

    @property
    def operator(self) -> dict:
        return self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]

    def grants(self, subject_namespace: str = NAMESPACE) -> dict[str | None, dict[tuple[str, str], set[str]]]:
        """Effective permissions of the operator's ServiceAccount: scope (None = cluster-wide, else a
        namespace) -> (group, resource) -> verbs, following the bindings to their roles as the API server
        does."""
        sa = self.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        roles = {
            (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o["rules"]
            for o in self.of_kind("ClusterRole") + self.of_kind("Role")
        }
        out: dict[str | None, dict[tuple[str, str], set[str]]] = {}
        for b in self.of_kind("ClusterRoleBinding") + self.of_kind("RoleBinding"):
            if {"kind": "ServiceAccount", "name": sa, "namespace": subject_namespace} not in b["subjects"]:
                continue
            ref = b["roleRef"]
            scope = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
            role_ns = scope if ref["kind"] == "Role" else None
            for rule in roles[(ref["kind"], role_ns, ref["name"])]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        out.setdefault(scope, {}).setdefault((group, resource), set()).update(rule["verbs"])
        return out


def render(chart, values: dict | None = None) -> Manifests:
    return Manifests(chart.render(values or {}, name=RELEASE, namespace=NAMESPACE))


VARIANTS = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "monitoring": {
        "podMonitor": {"enabled": True},
        "metrics": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "no-dashboards-no-rbac": {"dashboards": {"enabled": False}, "rbac": {"create": False}},
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_helm_lint_strict_passes(values):
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_chart_ships_the_generated_crd(chart):
    crds = {c["name"]: yaml.safe_load(c["data"]) for c in chart.crds}
    crd = crds["crds/flowdporun.yaml"]
    assert crd["metadata"]["name"] == "flowdporuns.flowdpo.dev"
    top_level = CHART.parent.parent / "crds" / "flowdporun.yaml"
    assert crd == yaml.safe_load(top_level.read_text()), "run `python -m flowdpo_operator.crd --write`"


def documented_values(text: str) -> tuple[list[str], list[str]]:
    """helm-docs semantics: a `# --` comment right above a key documents it and everything below it.
    Returns (documented key paths, leaf key paths nothing documents)."""
    documented, undocumented = [], []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented by itself or an ancestor)
    comments: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        if not stripped or stripped.startswith("- "):
            comments = []
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, _, rest = stripped.partition(":")
        path = ".".join([k for _, k, _ in stack] + [key])
        here = any(c.startswith("# --") for c in comments)
        inherited = any(d for _, _, d in stack)
        if here:
            documented.append(path)
        elif rest.strip() and not inherited:
            undocumented.append(path)
        stack.append((indent, key, here or inherited))
        comments = []
    return documented, undocumented


def test_values_are_documented_validated_and_in_the_readme(chart):
    """Every value has a `# --` comment and a row in the README's values table; the schema accepts the
    defaults and rejects a misspelt key with a message naming it."""
    documented, undocumented = documented_values((CHART / "values.yaml").read_text())
    assert not undocumented, f"values without a '# --' comment: {undocumented}"
    readme = (CHART / "README.md").read_text()
    missing = [key for key in documented if f"`{key}`" not in readme]
    assert not missing, f"values missing from charts/flowdpo/README.md's table: {missing}"
    chart.validate_schema(chart.values)
    with pytest.raises(helm_python.HelmValuesError, match="watchNamespace"):
        chart.render({"watchNamespace": ["team-a"]}, name=RELEASE, namespace=NAMESPACE)


class TestOperatorDeployment:
    def test_one_replica_recreated_never_overlapping(self, chart):
        d = render(chart).one("Deployment", "flowdpo-operator")
        assert d["metadata"]["namespace"] == NAMESPACE
        assert d["spec"]["replicas"] == 1
        assert d["spec"]["strategy"] == {"type": "Recreate"}
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    def test_command_and_default_flags_serve_all_namespaces(self, chart):
        c = render(chart).operator
        assert c["command"] == ["flowdpo-operator"]
        assert c["args"] == [
            "--all-namespaces", "--liveness-port", "8080", "--metrics-port", "9300", "--peering",
            f"{NAMESPACE}-{RELEASE}-peering",
        ]  # fmt: skip
        assert c["image"] == f"ghcr.io/flowdpo/flowdpo-operator:{chart.metadata['appVersion']}"

    def test_watch_namespaces_become_namespace_flags(self, chart):
        values = {"watchNamespaces": ["team-a", "team-b", "team-a"], "extraArgs": ["--verbose"]}
        args = render(chart, values).operator["args"]
        assert args[:4] == ["--namespace", "team-a", "--namespace", "team-b"]
        assert "--all-namespaces" not in args and args[-1] == "--verbose"

    def test_liveness_probe_hits_the_healthz_endpoint(self, chart):
        c = render(chart, {"livenessPort": 8181}).operator
        probe = c["livenessProbe"]["httpGet"]
        assert probe["path"] == "/healthz"
        port = next(p for p in c["ports"] if p["name"] == probe["port"])
        assert port["containerPort"] == 8181 and c["args"][c["args"].index("--liveness-port") + 1] == "8181"

    def test_runs_as_non_root_on_a_read_only_root_filesystem(self, chart):
        m = render(chart)
        pod = m.one("Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["runAsGroup"] == 0
        sc = m.operator["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        tmp = next(v for v in m.operator["volumeMounts"] if v["mountPath"] == "/tmp")
        assert {"name": tmp["name"], "emptyDir": {}} in pod["volumes"]

    def test_runs_under_the_charts_service_account(self, chart):
        m = render(chart)
        sa = m.one("ServiceAccount")
        assert m.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
        assert sa["metadata"]["namespace"] == NAMESPACE

    def test_bring_your_own_service_account_needs_its_name(self, chart):
        with pytest.raises(helm_python.HelmRenderError, match="serviceAccount.name is required"):
            render(chart, {"serviceAccount": {"create": False}})
        m = render(chart, {"serviceAccount": {"create": False, "name": "ops"}})
        assert not m.of_kind("ServiceAccount")
        assert m.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
        assert all(s["name"] == "ops" for b in m.of_kind("ClusterRoleBinding") for s in b["subjects"])

    def test_image_tag_and_pull_secrets(self, chart):
        m = render(chart, {"image": {"tag": "0.2.0-rc1"}, "imagePullSecrets": [{"name": "regcred"}]})
        assert m.operator["image"] == "ghcr.io/flowdpo/flowdpo-operator:0.2.0-rc1"
        assert m.one("Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]


class TestRBAC:
    def test_all_namespaces_grants_run_rules_cluster_wide_but_no_secret_unless_opted_in(self, chart):
        """A cluster-wide Secret read is every Secret of the cluster: the default install does without."""
        no_secrets = {k: v for k, v in RUN_RULES.items() if k != ("", "secrets")}
        m = render(chart)
        assert m.grants() == {None: {**DISCOVERY_RULES, **CLUSTER_PEERING, **no_secrets}}
        assert not m.of_kind("Role") and not m.of_kind("RoleBinding")
        opted = render(chart, {"rbac": {"clusterWideSecrets": True}})
        assert opted.grants() == {None: {**DISCOVERY_RULES, **CLUSTER_PEERING, **RUN_RULES}}

    def test_watch_namespaces_grants_run_rules_only_there(self, chart):
        m = render(chart, {"watchNamespaces": ["team-a", "team-b"]})
        scoped = {**RUN_RULES, **NAMESPACED_PEERING}
        assert m.grants() == {None: DISCOVERY_RULES, "team-a": scoped, "team-b": scoped}
        assert sorted(r["metadata"]["namespace"] for r in m.of_kind("Role")) == ["team-a", "team-b"]

    def test_no_wildcards_anywhere(self, chart):
        for values in VARIANTS.values():
            for role in render(chart, values).of_kind("ClusterRole") + render(chart, values).of_kind("Role"):
                for rule in role["rules"]:
                    for field in ("apiGroups", "resources", "verbs"):
                        assert "*" not in rule[field], (role["metadata"]["name"], rule)
                    assert "resourceNames" not in rule and "nonResourceURLs" not in rule

    def test_cluster_scoped_names_carry_the_release_namespace(self, chart):
        """Two releases of one name in different namespaces must not overwrite each other's ClusterRoles."""
        m = render(chart)
        for kind in ("ClusterRole", "ClusterRoleBinding"):
            for obj in m.of_kind(kind):
                assert obj["metadata"]["name"].startswith(f"{NAMESPACE}-"), obj["metadata"]["name"]
                assert "namespace" not in obj["metadata"]

    def test_rbac_can_be_left_to_the_admin(self, chart):
        m = render(chart, {"rbac": {"create": False}})
        assert not [
            o for o in m.objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
        ]


class TestDashboards:
    def test_every_dashboard_file_is_in_a_labelled_configmap(self, chart):
        m = render(chart)
        carried = {}
        for cm in m.of_kind("ConfigMap"):
            assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert cm["metadata"]["annotations"]["grafana_folder"] == "flowdpo"
            assert cm["metadata"]["namespace"] == NAMESPACE
            carried.update(cm["data"])
        files = {p.name: p.read_text() for p in (CHART / "dashboards").glob("*.json")}
        assert files and carried == files

    def test_label_folder_and_namespace_are_configurable(self, chart):
        values = {
            "dashboards": {
                "label": "grafana_dashboard_flowdpo",
                "labelValue": "yes",
                "folder": "ML",
                "folderAnnotation": "k8s-sidecar-target-directory",
                "namespace": "monitoring",
            }
        }
        for cm in render(chart, values).of_kind("ConfigMap"):
            assert cm["metadata"]["labels"]["grafana_dashboard_flowdpo"] == "yes"
            assert "grafana_dashboard" not in cm["metadata"]["labels"]
            assert cm["metadata"]["annotations"] == {"k8s-sidecar-target-directory": "ML"}
            assert cm["metadata"]["namespace"] == "monitoring"

    def test_disabled(self, chart):
        assert not render(chart, {"dashboards": {"enabled": False}}).of_kind("ConfigMap")


class TestMonitors:
    def test_monitors_off_operator_metrics_on_by_default(self, chart):
        m = render(chart)
        assert not m.of_kind("PodMonitor") and not m.of_kind("ServiceMonitor")
        args = m.operator["args"]
        assert args[args.index("--metrics-port") + 1] == "9300"
        assert m.one("Service")["spec"]["ports"][0]["targetPort"] == "metrics"

    def test_operator_metrics_can_be_turned_off(self, chart):
        m = render(chart, {"metrics": {"enabled": False}})
        assert not m.of_kind("Service")
        assert "--metrics-port" not in m.operator["args"]
        assert [p["name"] for p in m.operator["ports"]] == ["liveness"]

    def test_pod_monitor_scrapes_the_metrics_port_of_the_operators_run_pods(self, chart):
        pm = render(
            chart, {"podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}
        ).one("PodMonitor")
        assert pm["apiVersion"] == "monitoring.coreos.com/v1"
        assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert pm["spec"]["namespaceSelector"] == {"any": True}
        selector = pm["spec"]["selector"]["matchLabels"]
        ports = [e["port"] for e in pm["spec"]["podMetricsEndpoints"]]
        assert ports == ["metrics", "vllm-metrics"]
        for sample, expected in ((SAMPLE_RUN, {"metrics": {"rollout", "trainer"}, "vllm-metrics": set()}),
                                 (VLLM_SAMPLE_RUN, {"metrics": {"rollout", "trainer"}, "vllm-metrics": {"rollout"}})):
            scraped = {port: set() for port in ports}
            for component, pod in run_pod_templates(sample).items():
                assert selector.items() <= pod["metadata"]["labels"].items(), f"{component} pods are not selected"
                for port in ports:
                    if any(p["name"] == port for c in pod["spec"]["containers"] for p in c.get("ports", [])):
                        scraped[port].add(component)
            # workers and the trainer serve ours; a vLLM rollout pod also relays the vLLM server's own
            assert scraped == expected, sample.name
        operator_pod = render(chart).one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= operator_pod.items(), "the PodMonitor must not select the operator"

    def test_pod_monitor_follows_watch_namespaces(self, chart):
        pm = render(chart, {"podMonitor": {"enabled": True}, "watchNamespaces": ["team-a"]}).one("PodMonitor")
        assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}

    def test_service_monitor_scrapes_the_operators_metrics(self, chart):
        m = render(chart, VARIANTS["monitoring"])
        args = m.operator["args"]
        assert args[args.index("--metrics-port") + 1] == "9300"
        assert {"name": "metrics", "containerPort": 9300, "protocol": "TCP"} in m.operator["ports"]
        svc, sm = m.one("Service"), m.one("ServiceMonitor")
        pod_labels = m.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]]

    def test_service_monitor_without_metrics_says_what_to_do(self, chart):
        with pytest.raises(helm_python.HelmRenderError, match="needs metrics.enabled=true"):
            render(chart, {"serviceMonitor": {"enabled": True}, "metrics": {"enabled": False}})


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_object_is_labelled_and_placed(chart, values):
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    for obj in render(chart, values).objects:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", (obj["kind"], meta["name"])
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert len(meta["name"]) <= 63
        assert ("namespace" in meta) != (obj["kind"] in cluster_scoped), (obj["kind"], meta["name"])


def test_notes_say_how_to_start_and_watch_a_run(chart):
    notes = render(chart).notes
    assert "kubectl -n NAMESPACE apply -f run.yaml" in notes
    assert "get fdr" in notes
    assert "grafana_dashboard" in notes
    assert "crds/flowdporun.yaml" in notes


class TestNetworkPolicy:
    def test_run_pods_admit_only_their_metrics_port_and_the_vllm_server_is_pod_local(self, chart):
        rendered = render(chart)
        policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
        runs = policies[f"{RELEASE}-runs"]
        assert runs["metadata"]["namespace"] == NAMESPACE
        assert runs["spec"]["policyTypes"] == ["Ingress"]
        assert runs["spec"]["ingress"] == [
            {"ports": [{"port": "metrics", "protocol": "TCP"}, {"port": "vllm-metrics", "protocol": "TCP"}]}
        ]
        selector = runs["spec"]["podSelector"]["matchLabels"]
        pods = [*run_pod_templates().items(), *run_pod_templates(VLLM_SAMPLE_RUN).items()]
        for component, pod in pods:
            assert selector.items() <= pod["metadata"]["labels"].items(), f"{component} pods are not covered"
            for c in pod["spec"]["containers"]:
                # what listens beyond the pod is the named metrics ports, the ports the policy admits
                assert {p["name"] for p in c.get("ports", [])} <= {"metrics", "vllm-metrics"}
                if c["name"] == "vllm":
                    assert c["command"][c["command"].index("--host") + 1] == "127.0.0.1"
        operator = policies[f"{RELEASE}-operator"]
        operator_pod = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert operator["spec"]["podSelector"]["matchLabels"].items() <= operator_pod.items()
        assert [p["port"] for r in operator["spec"]["ingress"] for p in r["ports"]] == [9300]

    def test_follows_watch_namespaces_and_scrapers(self, chart):
        peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        rendered = render(chart, {"watchNamespaces": ["team-a", "team-b"], "networkPolicy": {"metricsFrom": [peer]}})
        runs = [p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-runs")]
        assert sorted(p["metadata"]["namespace"] for p in runs) == ["team-a", "team-b"]
        assert all(p["spec"]["ingress"][0]["from"] == [peer] for p in runs)

    def test_can_be_turned_off(self, chart):
        assert render(chart, {"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy") == []


def test_allowlist_and_ambient_credentials_become_operator_flags(chart):
    args = render(chart, {"allowedImages": ["registry.example.com/ml/"], "ambientStorageCredentials": True}).one(
        "Deployment"
    )["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--allowed-image") + 1] == "registry.example.com/ml/"
    assert "--ambient-storage-credentials" in args
    default = render(chart).one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--allowed-image" not in default and "--ambient-storage-credentials" not in default
    from flowdpo_operator.__main__ import build_parser

    parsed = build_parser().parse_args(args)
    assert parsed.allowed_image == ["registry.example.com/ml/"] and parsed.ambient_storage_credentials


class TestPeering:
    def test_peering_object_crds_and_rbac_follow_the_scope(self, chart):
        """kopf peering keeps a second operator process frozen: the chart ships kopf's peering CRDs, creates
        the peering object the operator joins (--peering) and grants exactly what kopf does with it."""
        crds = {yaml.safe_load(c["data"])["metadata"]["name"] for c in chart.crds}
        assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds
        m = render(chart)
        peering = m.one("ClusterKopfPeering")
        args = m.operator["args"]
        assert args[args.index("--peering") + 1] == peering["metadata"]["name"]
        assert m.grants()[None][("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "patch"}
        scoped = render(chart, {"watchNamespaces": ["team-a"]})
        assert [p["metadata"]["namespace"] for p in scoped.of_kind("KopfPeering")] == ["team-a"]
        assert scoped.grants()["team-a"][("kopf.dev", "kopfpeerings")] == {"get", "list", "watch", "patch"}
        assert ("kopf.dev", "clusterkopfpeerings") not in scoped.grants()[None]

    def test_can_be_turned_off(self, chart):
        m = render(chart, {"peering": {"enabled": False}})
        assert not m.of_kind("ClusterKopfPeering") and "--peering" not in m.operator["args"]
        assert ("kopf.dev", "clusterkopfpeerings") not in m.grants()[None]
