"""Kill `edgecnn train` at random instants, resume it, and check that no epoch was lost or added.

    .venv/bin/python tools/resume_kill_bench.py --kills 20 --json docs/benchmarks/resume_kills.json

Each trial starts a short real run (seed_cnn_tiny on the embedded sample), SIGKILLs it at a
random instant of its lifetime (TensorFlow start-up, an epoch, a checkpoint write), resumes it
with `edgecnn train --resume` (or starts it again if it died before its first checkpoint), and
then checks the finished run: the history holds epochs 1..E exactly once and the optimizer took
exactly E x steps-per-epoch steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS, LIMIT, BATCH = 6, 1024, 32


def _train(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgecnn.cli", "train", *args, "--quiet"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _finish(run: Path) -> str:
    """Resume the killed run (or start it again if nothing was committed) until it finishes."""
    if (run / "state.json").is_file():
        how = "resumed"
        proc = _train(["--resume", str(run)])
    else:
        how = "restarted"
        proc = _train(_fresh(run) + ["--overwrite"])
    if proc.wait(600) != 0:
        raise SystemExit(f"{how} run of {run} failed")
    return how


def _fresh(run: Path) -> list[str]:
    return ["--model", "seed_cnn_tiny", "--data", "sample", "--limit", str(LIMIT), "--batch-size", str(BATCH),
            "--epochs", str(EPOCHS), "--optimizer", "adam", "--out", str(run)]


def _check(run: Path) -> dict:
    code = ("import json, sys; from edgecnn.train.run import load_run_model; "
            f"m = load_run_model({str(run)!r}, checkpoint=True); "
            f"c = json.load(open({str(run / 'card.json')!r})); "
            "print(json.dumps({'steps': int(m.optimizer.iterations.numpy()), "
            "'train': c['dataset']['num_train']}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                     .stdout.strip().splitlines()[-1])
    hist = json.loads((run / "history.json").read_text())
    want_steps = EPOCHS * math.ceil(out["train"] / BATCH)
    return {"epochs": hist["epoch"], "steps": out["steps"], "expected_steps": want_steps,
            "ok": hist["epoch"] == list(range(1, EPOCHS + 1)) and out["steps"] == want_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="resume-kills-"))
    try:
        # One undisturbed run gives the lifetime the kill instants are drawn from.
        t0 = time.monotonic()
        if _train(_fresh(work / "ref")).wait(600) != 0:
            raise SystemExit("the reference run failed")
        life = time.monotonic() - t0
        trials = []
        for i in range(args.kills):
            run = work / f"run{i}"
            at = rng.uniform(0.15 * life, 0.9 * life)
            proc = _train(_fresh(run))
            time.sleep(at)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            state = json.loads((run / "state.json").read_text())["epoch"] if (run / "state.json").is_file() else None
            how = "finished before the kill" if (run / "history.json").is_file() else _finish(run)
            trials.append({"kill_at_s": round(at, 2), "epoch_at_kill": state, "then": how, **_check(run)})
            print(trials[-1], flush=True)
        ok = sum(t["ok"] for t in trials)
        print(f"{ok} of {len(trials)} trials: no epoch lost or added (run lifetime {life:.1f} s)")
        if args.json:
            args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                             "loadavg": os.getloadavg(), "lifetime_s": life, "trials": trials},
                                            indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
