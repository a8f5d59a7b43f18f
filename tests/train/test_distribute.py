"""Multi-worker training on tf.distribute: TF_CONFIG parsing, a real two-process gRPC cluster on
localhost (CPU), a worker killed mid-run and resumed, and the one-line errors.

The two cluster tests start `edgecnn train` processes (TensorFlow's collectives must be set up at
process start); they are marked ``slow`` (deselect with ``-m "not slow"``) and take about a minute
each on 2 busy cores.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecnn.errors import ConfigError, WorkerError
from edgecnn.train.distribute import global_steps, parse_tf_config

TWO = {"cluster": {"worker": ["localhost:1111", "localhost:2222"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("conf, addresses, index, chief", [
    (TWO, ("localhost:1111", "localhost:2222"), 1, False),
    ({**TWO, "task": {"type": "worker", "index": 0}}, ("localhost:1111", "localhost:2222"), 0, True),
    ({"cluster": {"chief": ["c:1"], "worker": ["w:2", "w:3"]}, "task": {"type": "worker", "index": 0}},
     ("c:1", "w:2", "w:3"), 1, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["w:2"]}, "task": {"type": "chief", "index": 0}},
     ("c:1", "w:2"), 0, True),
])
def test_tf_config_gives_the_cluster_and_this_task(conf, addresses, index, chief):
    cluster = parse_tf_config(json.dumps(conf))
    assert cluster.addresses == addresses and cluster.index == index and cluster.is_chief == chief
    assert cluster.num_workers == len(addresses)


@pytest.mark.parametrize("text, message", [
    (None, "TF_CONFIG is not set"),
    ("{cluster: [", "TF_CONFIG is not valid JSON"),
    ('["a"]', 'has no "cluster"'),
    ('{"task": {"type": "worker", "index": 0}}', 'has no "cluster"'),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker"}}), "job(s) ps"),
    (json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}), "not a host:port"),
    (json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}), "non-empty list"),
    (json.dumps({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}), "same address"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), 'no "task"'),
    (json.dumps({**TWO, "task": {"type": "worker", "index": 2}}), "task index 2, out of range for its 2 worker"),
    (json.dumps({**TWO, "task": {"type": "worker", "index": "1"}}), "task index '1'"),
])
def test_malformed_tf_config_is_a_one_line_error(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_tf_config(text)
    assert "\n" not in str(err.value) and "docs/distributed.md" in str(err.value)


@pytest.mark.parametrize("n, batch, replicas, workers, steps", [
    (1000, 100, 1, 1, 10), (1001, 100, 2, 2, 10), (999, 100, 2, 2, 9), (460, 64, 2, 2, 7), (1000, 64, 8, 2, 15),
])
def test_every_worker_runs_the_same_number_of_global_steps(n, batch, replicas, workers, steps):
    assert global_steps(n, batch, replicas=replicas, workers=workers) == steps
    # each worker's shard x[i::workers] holds at least steps * its share of the global batch
    assert all(len(range(i, n, workers)) >= steps * batch // workers for i in range(workers))


def test_batch_that_does_not_split_or_too_few_images():
    with pytest.raises(ConfigError, match="batch_size 65 does not split across 2 replicas"):
        global_steps(1000, 65, replicas=2, workers=2)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        global_steps(100, 128, replicas=2, workers=2)
    with pytest.raises(ConfigError, match="distribute must be one of none, mirrored, multi-worker"):
        from edgecnn.train.config import TrainConfig

        TrainConfig(distribute="horovod")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def test_worker_that_never_answers_is_a_one_line_error_and_no_run(tmp_path, monkeypatch):
    from edgecnn.train.distribute import wait_for_workers

    ports = _free_ports(2)
    t = time.monotonic()
    with pytest.raises(WorkerError, match=rf"task 1 at localhost:{ports[1]} did not answer within 1.5 s"):
        wait_for_workers(parse_tf_config(_tf_config(ports, 0)), timeout_s=1.5)
    assert time.monotonic() - t < 10
    # through the CLI: one line, exit 1, no run directory
    from click.testing import CliRunner

    from edgecnn.cli import main

    monkeypatch.setenv("TF_CONFIG", _tf_config(ports, 0))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--model", "seed_cnn_tiny", "--data", "sample", "--limit", "128",
                                    "--batch-size", "32", "--distribute", "multi-worker", "--worker-timeout", "1",
                                    "--out", str(out)])
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert res.exit_code == 1 and len(lines) == 1 and "did not answer within 1 s" in lines[0], res.output
    assert "Traceback" not in res.output and not out.exists()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    res = CliRunner().invoke(main, ["train", "--model", "seed_cnn_tiny", "--data", "sample", "--distribute",
                                    "multi-worker", "--out", str(out)])
    assert res.exit_code == 1 and "TF_CONFIG is not valid JSON" in res.output and not out.exists()


@pytest.mark.tf
def test_mirrored_on_a_cpu_trains_one_replica_and_says_so(tmp_path, caplog):
    import logging

    from edgecnn.card import ModelCard
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train
    from edgecnn.train.run import load_run_model

    caplog.set_level(logging.INFO, logger="edgecnn")
    run = train(TrainConfig(model="seed_cnn_tiny", data="sample", epochs=1, limit=256, batch_size=64,
                            distribute="mirrored", out=str(tmp_path / "r")), verbose=0)
    if "no GPU is visible: one replica on the CPU" not in caplog.text:
        pytest.skip("this machine has GPUs")
    card = ModelCard.load(run)
    assert card.training["distribute"] == "mirrored" and card.metrics["epochs"] == 1
    model = load_run_model(run, checkpoint=True)
    assert int(model.optimizer.iterations.numpy()) == 230 // 64  # 256 - 10% validation, full global batches


# ---------------------------------------------------------------------------------- real clusters

def _colours(path: Path, n=640, seed=0) -> Path:
    """Three classes told apart by colour: a 1-worker run reaches > 90% in 3 epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for c in range(3):
        x[y == c, :, :, c] += 150
    np.savez(path, x_train=x, y_train=y, x_test=x[:150], y_test=y[:150])
    return path


def _start(tmp_path: Path, ports: list[int], index: int, args: list[str], tag: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CONFIG": _tf_config(ports, index), "TMPDIR": str(tmp_path / "tmp"),
           "PYTHONUNBUFFERED": "1"}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    log = open(tmp_path / f"{tag}-worker{index}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "edgecnn.cli", "train", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _log(tmp_path: Path, tag: str, index: int) -> str:
    return (tmp_path / f"{tag}-worker{index}.log").read_text()


RECIPE = ["--model", "seed_cnn_tiny", "--batch-size", "32", "--lr", "3e-3", "--normalization", "dataset",
          "--seed", "0", "--quiet"]


@pytest.mark.tf
@pytest.mark.slow
def test_two_local_workers_train_like_one(tmp_path):
    from edgecnn.card import ModelCard
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import predict_uint8, train
    from edgecnn.train.run import load_run_model

    data = _colours(tmp_path / "colours.npz")
    run = tmp_path / "two"
    # With test-time augmentation: the chief scores the final model alone, after the other worker
    # left; its TTA pass once predicted with the distributed model and failed in a collective.
    (tmp_path / "tta.json").write_text(json.dumps({"tta": "flip"}))
    args = [*RECIPE, "--data", str(data), "--epochs", "3", "--distribute", "multi-worker", "--out", str(run),
            "--config", str(tmp_path / "tta.json")]
    ports = _free_ports(2)
    procs = [_start(tmp_path, ports, i, args, "fit") for i in (0, 1)]
    codes = _finish(procs)
    assert codes == [0, 0], _log(tmp_path, "fit", 0)[-3000:] + _log(tmp_path, "fit", 1)[-3000:]
    assert "Training done on worker 1 of 2" in _log(tmp_path, "fit", 1)
    assert not list((tmp_path / "tmp").glob("edgecnn-worker*"))  # the other worker's checkpoints are gone
    card = ModelCard.load(run)
    assert card.training["distribute"] == "multi-worker" and card.metrics["epochs"] == 3
    assert card.training["tta"] == "flip" and 0 <= card.metrics["test_accuracy_tta"] <= 1
    assert json.loads((run / "history.json").read_text())["epoch"] == [1, 2, 3]
    model = load_run_model(run)  # the chief's model loads and predicts as its card says
    with np.load(data) as d:
        acc = (predict_uint8(model, d["x_test"], card).argmax(1) == d["y_test"]).mean()
    assert abs(acc - card.metrics["test_accuracy"]) < 1e-9
    # one worker, the same recipe (global batch and lr unchanged)
    single = train(TrainConfig(model="seed_cnn_tiny", data=str(data), epochs=3, batch_size=32, lr=3e-3,
                               normalization="dataset", out=str(tmp_path / "one")), verbose=0)
    one = ModelCard.load(single).metrics["test_accuracy"]
    assert one > 0.8 and card.metrics["test_accuracy"] > 0.8
    assert abs(card.metrics["test_accuracy"] - one) < 0.1, (card.metrics["test_accuracy"], one)


@pytest.mark.tf
@pytest.mark.slow
def test_a_worker_killed_mid_run_then_both_resume(tmp_path):
    data = _colours(tmp_path / "colours.npz", n=1000)
    run = tmp_path / "run"
    args = [*RECIPE, "--data", str(data), "--epochs", "40", "--distribute", "multi-worker", "--out", str(run)]
    ports = _free_ports(2)
    chief, other = (_start(tmp_path, ports, i, args, "fit") for i in (0, 1))
    state = run / "state.json"
    deadline = time.time() + 180
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
        assert chief.poll() is None, _log(tmp_path, "fit", 0)[-3000:]
        time.sleep(0.1)
    other.send_signal(signal.SIGKILL)
    other.wait()
    # the chief notices, stops with one line that says how to go on, and keeps its last checkpoint
    code = _finish([chief], timeout=120)[0]
    chief_log = _log(tmp_path, "fit", 0)
    errors = [ln for ln in chief_log.splitlines() if ln.startswith("Error:")]
    assert code == 1 and len(errors) == 1 and f"--resume {run}" in errors[0], chief_log[-3000:]
    assert "Traceback" not in chief_log
    done = json.loads(state.read_text())["epoch"]
    assert 1 <= done < 40
    # resume both (new ports: a restarted job may get other ones), a short tail to keep the test short
    cfg = json.loads((run / "config.json").read_text())
    cfg["epochs"] = done + 2
    (run / "config.json").write_text(json.dumps(cfg))
    ports = _free_ports(2)
    procs = [_start(tmp_path, ports, i, ["--resume", str(run), "--quiet"], "resume") for i in (0, 1)]
    codes = _finish(procs)
    assert codes == [0, 0], _log(tmp_path, "resume", 0)[-3000:] + _log(tmp_path, "resume", 1)[-3000:]
    hist = json.loads((run / "history.json").read_text())
    assert hist["epoch"] == list(range(1, done + 3))  # no epoch repeated or skipped
    assert f"Epoch {done + 1}/{done + 2}" in _log(tmp_path, "resume", 1)  # the other worker resumed too
    from edgecnn.train.run import load_run_model

    model = load_run_model(run, checkpoint=True)
    steps = (900 // 2) // 16  # 1000 images - 10% validation, sharded over 2 workers, 16 a worker a step
    assert int(model.optimizer.iterations.numpy()) == (done + 2) * steps
