"""The operator as a local process (`flowdpo-operator --namespace NS`) for tests that are about runs, not about
the chart: it can be killed and restarted at will (an operator restart mid-run). test_chart.py runs it the
other way, as the chart's Deployment under the chart's ServiceAccount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from e2e.support.containers import free_port

OPERATOR = Path(sys.executable).parent / "flowdpo-operator"


class OperatorProcess:
    """`flowdpo-operator` serving one namespace, logging to `log_path` (appended across restarts)."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, env: dict[str, str] | None = None):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {
            "PATH": f"{OPERATOR.parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/tmp"),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        argv = [str(OPERATOR), "--namespace", self.namespace, "--liveness-port", str(free_port())]
        self.starts += 1
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== operator start #{self.starts}: {' '.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: the hardest restart (no cleanup, no final status patch)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no operator log)"
        return f"--- operator ({self.log_path}) ---\n" + "\n".join(text)
