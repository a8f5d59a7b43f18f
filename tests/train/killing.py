"""Killing a real `edgecnn train` process mid-run, for the resume tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def kill_after_first_epoch(cmd: list[str], run: Path, *, timeout_s: float = 240) -> int:
    """Start ``cmd``, SIGKILL it once ``run/state.json`` records a finished epoch, and return the
    epochs the run finished."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    state = run / "state.json"
    deadline = time.time() + timeout_s
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(state.read_text())["epoch"]


def shorten_to(run: Path, epochs: int) -> None:
    """Make the killed run's stored recipe end after ``epochs`` (a resumed run keeps its recipe)."""
    cfg = json.loads((run / "config.json").read_text())
    cfg["epochs"] = epochs
    (run / "config.json").write_text(json.dumps(cfg))
