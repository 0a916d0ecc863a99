"""The OpenMP wait policy the entry point sets for itself and its children."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_search_rl.threads import configure_threads

ROOT = Path(__file__).resolve().parents[1]

# Runs the entry point, then loads torch (and so libgomp) the way a command would, and prints the
# variable as the process sees it. OMP_DISPLAY_ENV=VERBOSE makes libgomp print the settings it
# actually read when it was loaded: PASSIVE turns its spinning off (GOMP_SPINCOUNT = '0').
CHILD = """\
import os, sys
from lit_search_rl.cli import main
main(['--help'])
import torch
print('policy', os.environ.get('OMP_WAIT_POLICY'))
"""


def run_child(**env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(env, OMP_DISPLAY_ENV="VERBOSE")
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=environ)  # fmt: skip


def test_configure_threads_sets_passive_only_when_unset() -> None:
    environ: dict[str, str] = {}
    assert configure_threads(environ) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    for users in ("ACTIVE", "passive", ""):
        environ = {"OMP_WAIT_POLICY": users}
        assert configure_threads(environ) == {"OMP_WAIT_POLICY": users}
        assert environ == {"OMP_WAIT_POLICY": users}


def test_the_entry_point_sets_passive_before_torch_loads_openmp() -> None:
    result = run_child()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "policy PASSIVE" in result.stdout
    # What libgomp itself read at load time: the policy took effect, not just the variable.
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in result.stderr and "GOMP_SPINCOUNT = '0'" in result.stderr


@pytest.mark.parametrize("users", ["ACTIVE"])
def test_the_entry_point_keeps_the_users_wait_policy(users: str) -> None:
    result = run_child(OMP_WAIT_POLICY=users)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"policy {users}" in result.stdout
    assert f"OMP_WAIT_POLICY = '{users}'" in result.stderr and "GOMP_SPINCOUNT = '0'" not in result.stderr
