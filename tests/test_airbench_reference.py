"""tools/airbench_reference.py: airbench94's own code on the CPU (the fast recipe's peer). The
full run needs PyTorch and the airbench package, which edgecnn does not depend on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "airbench_reference.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=600)


def test_help_names_what_it_runs():
    r = _run("--help")
    assert r.returncode == 0 and "airbench94" in r.stdout and "--epochs" in r.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None and importlib.util.find_spec("airbench") is not None,
                    reason="PyTorch and airbench are installed here")
def test_without_pytorch_it_says_what_to_install_in_one_line(tmp_path):
    r = _run(str(tmp_path / "cifar10.npz"), "--work", str(tmp_path / "w"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "needs PyTorch and the airbench package" in r.stderr


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("airbench") is None,
                    reason="needs PyTorch and airbench (tools/airbench_reference.py docstring)")
def test_a_few_reference_steps_on_the_cpu(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    npz = tmp_path / "c.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (2048, 32, 32, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, (2048, 1)),
             x_test=rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, (256, 1)))
    r = _run(str(npz), "--work", str(tmp_path / "w"), "--epochs", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "eval" in r.stdout and "wall" in r.stdout
