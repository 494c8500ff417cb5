"""The harness itself: real controllers (Job, Deployment/ReplicaSet, scheduler, garbage collector) drive pods
that the fake kubelet runs as local processes. Everything else in e2e/ relies on these behaviours."""

from __future__ import annotations

import textwrap
import urllib.request

import kubernetes
import pytest

from e2e.support.waiting import (
    Probe,
    absent,
    at_least,
    equals,
    exists,
    job_condition,
    one_of,
    pod_restart_count,
    process_alive,
    satisfies,
)

pytestmark = pytest.mark.e2e


def pod_template(name: str, code: str, *args: str, restart: str = "Never", **container) -> dict:
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "python:3.11", "command": ["python", "-c", textwrap.dedent(code)],
                            "args": list(args), **container}],
        },
    }


def pod_probe(api, ns: str, name: str) -> Probe:
    core = kubernetes.client.CoreV1Api(api)
    return Probe(lambda: api.sanitize_for_serialization(core.read_namespaced_pod(name, ns)), f"pod {ns}/{name}")


def phase_of(api, ns: str, name: str) -> Probe:
    pod = pod_probe(api, ns, name)
    return Probe(lambda: ((pod() or {}).get("status") or {}).get("phase"), f"phase of pod {ns}/{name}")


def create_pod(api, ns: str, name: str, template: dict) -> None:
    kubernetes.client.CoreV1Api(api).create_namespaced_pod(
        ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template["metadata"]},
             "spec": template["spec"]})


def test_job_pod_runs_as_a_process_and_the_job_completes(kube_api, kubelet, namespace, wait):
    # A GPU request too: the node advertises nvidia.com/gpu, so the real scheduler binds it.
    template = pod_template("hello", "print('hello from a pod')",
                            resources={"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}})
    kubernetes.client.BatchV1Api(kube_api).create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": template},
    })
    wait(job_condition(kube_api, namespace, "hello"), equals("Complete"), timeout=60, unless=equals("Failed"))
    assert "hello from a pod" in kubelet.tail_logs(namespace)


def test_failing_job_pod_is_reported_failed_with_its_exit_code(kube_api, namespace, wait):
    create_pod(kube_api, namespace, "crash", pod_template("crash", "import sys; sys.exit(7)"))
    wait(phase_of(kube_api, namespace, "crash"), equals("Failed"), timeout=60)
    status = pod_probe(kube_api, namespace, "crash")()["status"]
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 7


def test_deployment_pod_is_restarted_after_its_container_exits(kube_api, namespace, wait):
    template = pod_template("flaky", "import sys; print('up'); sys.exit(3)", restart="Always")
    kubernetes.client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "flaky"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "flaky"}}, "template": template},
    })
    wait(pod_restart_count(kube_api, namespace, "app=flaky"), at_least(2), timeout=60)
    pods = kubernetes.client.CoreV1Api(kube_api).list_namespaced_pod(namespace, label_selector="app=flaky").items
    assert len(pods) == 1, "the container restarts inside the same pod; the ReplicaSet makes no new one"
    assert pods[0].status.phase == "Running"
    assert pods[0].status.container_statuses[0].last_state.terminated.exit_code == 3


def test_deleted_pod_process_is_killed_and_the_deletion_finished(kube_api, kubelet, namespace, wait):
    # The process ignores SIGTERM: the kubelet must escalate to SIGKILL after the grace period (1 s).
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('sleeping', flush=True)
        time.sleep(600)
    """
    create_pod(kube_api, namespace, "sleeper", pod_template("sleeper", code))
    wait(phase_of(kube_api, namespace, "sleeper"), equals("Running"), timeout=60)
    pid = wait(Probe(lambda: kubelet.pid(namespace, "sleeper", "main"), "pid of sleeper"), exists(), timeout=10)
    kubernetes.client.CoreV1Api(kube_api).delete_namespaced_pod("sleeper", namespace)
    wait(process_alive(pid), equals(False), timeout=20)
    wait(pod_probe(kube_api, namespace, "sleeper"), absent(), timeout=20)


def test_config_map_volume_secret_env_and_mount_paths_reach_the_process(kube_api, namespace, wait, kubelet):
    core = kubernetes.client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"run.yaml": "answer: 42\n"}})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                              "stringData": {"AWS_ACCESS_KEY_ID": "AKIA-TEST", "token": "s3cr3t"}})
    code = """
        import os, sys
        print('arg:', open(sys.argv[1]).read().strip())
        print('env path:', open(os.environ['CONFIG']).read().strip())
        print('from envFrom:', os.environ['AWS_ACCESS_KEY_ID'])
        print('from secretKeyRef:', os.environ['TOKEN'])
        print('expanded:', os.environ['GREETING'])
        print('scratch writable:', os.access(os.environ['HOME'], os.W_OK))
    """
    template = pod_template(
        "cfg", code, "/etc/flowdpo/run.yaml",
        volumeMounts=[{"name": "config", "mountPath": "/etc/flowdpo"}, {"name": "scratch", "mountPath": "/tmp"}],
        envFrom=[{"secretRef": {"name": "creds"}}],
        env=[{"name": "CONFIG", "value": "/etc/flowdpo/run.yaml"}, {"name": "HOME", "value": "/tmp"},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
             {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
             {"name": "GREETING", "value": "hi $(NAME)"}],
    )
    template["spec"]["volumes"] = [{"name": "config", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}}]
    create_pod(kube_api, namespace, "cfg", template)
    wait(phase_of(kube_api, namespace, "cfg"), equals("Succeeded"), timeout=60, unless=equals("Failed"))
    logs = kubelet.tail_logs(namespace)
    for line in ("arg: answer: 42", "env path: answer: 42", "from envFrom: AKIA-TEST", "from secretKeyRef: s3cr3t",
                 "expanded: hi cfg", "scratch writable: True"):
        assert line in logs


def test_missing_secret_keeps_the_pod_pending_until_it_exists(kube_api, namespace, wait):
    template = pod_template("late", "import os; print(os.environ['K'])", envFrom=[{"secretRef": {"name": "late"}}])
    create_pod(kube_api, namespace, "late", template)
    reason = Probe(
        lambda: ((((pod_probe(kube_api, namespace, "late")() or {}).get("status") or {})
                  .get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting", {}).get("reason"),
        "waiting reason of pod late",
    )
    wait(reason, equals("CreateContainerConfigError"), timeout=30)
    kubernetes.client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace, {"metadata": {"name": "late"}, "stringData": {"K": "v"}})
    wait(phase_of(kube_api, namespace, "late"), equals("Succeeded"), timeout=30)


def test_service_account_token_reaches_the_process_only_when_automounted(kube_api, namespace, wait, kubelet):
    code = """
        import os
        from kubernetes import client, config
        if 'KUBECONFIG' not in os.environ:
            print('no API credentials')
        else:
            config.load_kube_config()
            try:
                client.CoreV1Api().list_namespaced_pod(os.environ['NS'])
            except client.rest.ApiException as e:
                print('status', e.status, e.body)
    """
    env = [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    # A scratch emptyDir at /tmp (as the chart's operator has) must not swallow the kubelet's own host paths.
    with_token = pod_template("with-token", code, env=[*env, {"name": "HOME", "value": "/tmp"}],
                              volumeMounts=[{"name": "scratch", "mountPath": "/tmp"}])
    with_token["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    create_pod(kube_api, namespace, "with-token", with_token)
    without = pod_template("without-token", code, env=env)
    without["spec"]["automountServiceAccountToken"] = False
    create_pod(kube_api, namespace, "without-token", without)
    for name in ("with-token", "without-token"):
        wait(phase_of(kube_api, namespace, name), one_of("Succeeded"), timeout=60, unless=equals("Failed"))
    logs = {w.pod_name: w.log_paths["main"].read_text() for w in kubelet.workers(namespace)}
    # Authenticated as the pod's ServiceAccount, which RBAC grants nothing: 403, not 401.
    assert "status 403" in logs["with-token"]
    assert f"system:serviceaccount:{namespace}:default" in logs["with-token"]
    assert "no API credentials" in logs["without-token"]


def test_metrics_port_is_mapped_to_a_free_local_port(kube_api, namespace, wait, kubelet):
    code = """
        import http.server, sys
        port = int(sys.argv[sys.argv.index('--metrics-port') + 1])
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b'demo_metric 1\\n')
        http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()
    """
    create_pod(kube_api, namespace, "exporter", pod_template(
        "exporter", code, "--metrics-port", "9400", ports=[{"containerPort": 9400, "name": "metrics"}]))
    wait(phase_of(kube_api, namespace, "exporter"), equals("Running"), timeout=60)
    url = kubelet.metrics_url(namespace, "exporter", "main")
    assert not url.endswith(":9400/metrics")

    def scrape():
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return None

    wait(Probe(scrape, f"GET {url}"), satisfies(lambda body: body and "demo_metric 1" in body, "serves metrics"),
         timeout=20)


def test_a_pod_of_a_built_image_runs_from_it_with_its_security_context(kube_api, namespace, wait, kubelet):
    """The podman path (e2e/support/podman.py): runAsUser and a read-only root filesystem reach the container,
    and runAsNonRoot with user 0 is refused the way a kubelet refuses it."""
    images = sorted(kubelet.config.container_images)
    if not images:
        pytest.fail("no built image: run `bash scripts/images.sh build operator`", pytrace=False)
    # HOME is writable by group 0 in every image: only the read-only root filesystem stops the write.
    script = "id -u; id -g; touch /home/flowdpo/x 2>/dev/null && echo writable || echo read-only"
    container = {"name": "main", "image": images[0], "command": ["sh", "-c", script]}
    create_pod(kube_api, namespace, "confined", {"metadata": {}, "spec": {
        "restartPolicy": "Never", "securityContext": {"runAsUser": 4242, "runAsGroup": 0, "runAsNonRoot": True},
        "containers": [{**container, "securityContext": {"readOnlyRootFilesystem": True}}]}})
    wait(phase_of(kube_api, namespace, "confined"), equals("Succeeded"), timeout=120, unless=equals("Failed"))
    log = next(p for p in kubelet.log_paths(namespace) if "confined" in str(p)).read_text()
    assert log.split()[-3:] == ["4242", "0", "read-only"]
    create_pod(kube_api, namespace, "as-root", {"metadata": {}, "spec": {
        "restartPolicy": "Never", "securityContext": {"runAsUser": 0, "runAsNonRoot": True}, "containers": [container]}})
    reason = Probe(
        lambda: ((((pod_probe(kube_api, namespace, "as-root")() or {}).get("status") or {})
                  .get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting", {}),
        "waiting state of pod as-root",
    )
    wait(reason, satisfies(lambda w: w.get("reason") == "CreateContainerConfigError" and "runAsNonRoot"
                           in w.get("message", ""), "refused for runAsNonRoot"), timeout=60)
