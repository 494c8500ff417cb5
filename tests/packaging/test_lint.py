"""The tree passes ruff (the configuration in pyproject.toml), so CI catches lint regressions too."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT


def test_ruff_check_passes():
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is missing: it comes with the dev extra"
    r = subprocess.run([exe, "check", "."], cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
