import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf


def _learnable_npz(path: Path, n=300, seed=0):
    """Three classes told apart by colour: learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for c in range(3):
        x[y == c, :, :, c] += 150
    np.savez(path, x_train=x, y_train=y, x_test=x[:60], y_test=y[:60])
    return path


def test_training_learns_and_writes_a_complete_run(tmp_path):
    from edgecnn.card import ModelCard
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train
    from edgecnn.train.run import load_run_model

    data = _learnable_npz(tmp_path / "colors.npz")
    cfg = TrainConfig(model="seed_cnn_tiny", data=str(data), epochs=4, batch_size=32, lr=3e-3,
                      out=str(tmp_path / "run"), normalization="dataset", schedule="cosine", warmup_epochs=1,
                      label_smoothing=0.05)
    run = train(cfg, verbose=0)
    names = {p.name for p in run.iterdir()}
    assert {"model.keras", "card.json", "history.json", "history.csv", "curves.png", "metrics.json",
            "config.json"} <= names
    hist = json.loads((run / "history.json").read_text())
    assert hist["epoch"] == [1, 2, 3, 4]
    assert hist["loss"][-1] < hist["loss"][0]
    card = ModelCard.load(run)
    assert card.metrics["test_accuracy"] > 0.6  # chance is 1/3
    assert card.normalization == "dataset" and card.mean[0] != 0
    assert card.dataset["num_train"] == 270 and card.versions["keras"]
    # the card's normalization reproduces the model's accuracy outside training
    from edgecnn.train.loop import predict_uint8

    with np.load(data) as d:
        acc = (predict_uint8(load_run_model(run), d["x_test"], card).argmax(1) == d["y_test"]).mean()
    assert abs(acc - card.metrics["test_accuracy"]) < 1e-9
    assert ModelCard.from_json(card.to_json()) == card


@pytest.mark.parametrize("optimizer, schedule", [("sgd", "step"), ("adamw", "onecycle"), ("rmsprop", "constant")])
def test_optimizers_and_schedules_run(tmp_path, optimizer, schedule):
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    cfg = TrainConfig(model="seed_cnn_tiny", data="sample", epochs=2, limit=128, batch_size=64, optimizer=optimizer,
                      schedule=schedule, step_every=1, weight_decay=1e-4, nesterov=optimizer == "sgd",
                      early_stopping=1, out=str(tmp_path / "r"))
    assert (train(cfg, verbose=0) / "model.keras").is_file()


def test_bad_runs_leave_no_directory(tmp_path):
    from edgecnn.errors import ConfigError, DataError, ModelNotFoundError
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    out = tmp_path / "never"
    with pytest.raises(ModelNotFoundError):
        train(TrainConfig(model="resnet21", data="sample", out=str(out)))
    with pytest.raises(DataError):
        train(TrainConfig(model="seed_cnn_tiny", data=str(tmp_path / "nope.npz"), out=str(out)))
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(lr=-0.1)
    assert not out.exists()


def test_resume_after_killing_a_real_training_process(tmp_path):
    """Kill `edgecnn train` after its first checkpoint; --resume continues at the next epoch."""
    from tests.train.killing import ENV as env
    from tests.train.killing import kill_after_first_epoch, shorten_to

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgecnn.cli", "train", "--model", "resnet_tiny", "--data", "sample",
           "--epochs", "40", "--batch-size", "32", "--out", str(run), "--quiet"]
    done = kill_after_first_epoch(cmd, run)
    assert 1 <= done < 40, "the process was killed mid-training"
    shorten_to(run, done + 1)  # finish quickly: the resumed run keeps its recipe
    out = subprocess.run([sys.executable, "-m", "edgecnn.cli", "train", "--resume", str(run), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    hist = json.loads((run / "history.json").read_text())
    assert hist["epoch"] == list(range(1, done + 2))  # no epoch repeated or skipped
    assert f"Epoch {done + 1}/{done + 1}" in out.stdout
    # resuming a finished run is refused with a one-line message
    again = subprocess.run([sys.executable, "-m", "edgecnn.cli", "train", "--resume", str(run)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 1 and "already finished" in again.stderr and "Traceback" not in again.stderr


def test_resume_keeps_optimizer_state(tmp_path):
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train
    from edgecnn.train.run import load_run_model

    cfg = TrainConfig(model="seed_cnn_tiny", data="sample", epochs=1, limit=64, batch_size=32, optimizer="adam",
                      out=str(tmp_path / "r"))
    run = train(cfg, verbose=0)
    model = load_run_model(run, checkpoint=True)
    assert int(model.optimizer.iterations.numpy()) == 2  # 64 images / 32 per step


def test_kill_between_checkpoint_and_state_adds_no_hidden_epoch(tmp_path, monkeypatch):
    """Issue 11: a kill after the model file was replaced but before state.json was written used to
    resume from the new weights with the old epoch count: one optimizer epoch more than the history."""
    from edgecnn.train import loop
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.run import TrainState, load_run_model

    cfg = TrainConfig(model="seed_cnn_tiny", data="sample", epochs=3, limit=64, batch_size=32, optimizer="adam",
                      out=str(tmp_path / "r"))
    real = TrainState.save

    def die_on_second_state(state, path):
        if path.name == "state.json" and state.epoch == 2:
            raise KeyboardInterrupt  # as a SIGKILL would: the epoch-2 checkpoint exists, its state does not
        real(state, path)

    monkeypatch.setattr(TrainState, "save", die_on_second_state)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, verbose=0)
    run = tmp_path / "r"
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    assert (run / "checkpoint-e0002.keras").exists()  # written, but never committed
    monkeypatch.setattr(TrainState, "save", real)
    loop.resume(run, verbose=0)
    hist = json.loads((run / "history.json").read_text())
    assert hist["epoch"] == [1, 2, 3]
    model = load_run_model(run, checkpoint=True)
    assert int(model.optimizer.iterations.numpy()) == 3 * 2  # 3 epochs x (64 images / 32), not 4 epochs
    assert [p.name for p in run.glob("checkpoint*.keras")] == ["checkpoint-e0003.keras"]


def test_corrupt_state_on_resume_is_one_line(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "seed_cnn_tiny", "data": "sample"}))
    (run / "state.json").write_text("{not json")
    res = subprocess.run([sys.executable, "-m", "edgecnn.cli", "train", "--resume", str(run)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "state.json is corrupt" in res.stderr


def test_a_run_killed_before_its_first_checkpoint_can_simply_be_started_again(tmp_path):
    """Issue 21 §2.7: a train killed before its first checkpoint left a folder that neither --resume
    ("start it again with --overwrite") nor a plain `train --out` ("exists ... or resume") accepted.
    The folder (what a run writes before its first epoch ends) is simply trained into again; resume
    says so; a folder with anything else in it is still refused."""
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    data = _learnable_npz(tmp_path / "colors.npz", n=120)
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(model="seed_cnn_tiny", data=str(data), epochs=1, batch_size=32, out=str(run))
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))  # all a kill -9 before epoch 1 leaves
    res = subprocess.run([sys.executable, "-m", "edgecnn.cli", "train", "--resume", str(run)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and f"edgecnn train --out {run}" in res.stderr + res.stdout
    assert (train(cfg, verbose=0) / "model.keras").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "notes.txt").write_text("mine")
    from edgecnn.errors import ConfigError

    with pytest.raises(ConfigError, match="exists"):
        train(cfg.replace(out=str(other)), verbose=0)
    assert (other / "notes.txt").is_file()


def test_the_final_scoring_predicts_with_the_local_copy_only(tmp_path, monkeypatch):
    """Issue 22 §7: the test-time-augmentation pass predicted with the distributed model while the
    plain pass used its local copy; on a multi-worker run the chief then waited in a collective for
    workers that had already left, and the run failed with "a worker stopped answering". Every
    prediction of the final scoring must go through Distribution.local_copy."""
    from edgecnn.train import loop
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.distribute import Distribution

    copies, used = [], []

    def local_copy(self, model):  # as under a strategy: a model of its own, outside it
        copy = type(model).from_config(model.get_config())
        copy.set_weights(model.get_weights())
        copies.append(copy)
        return copy

    real_predict = loop.predict_uint8

    def predict_uint8(model, x, card, **kw):
        used.append(model)
        return real_predict(model, x, card, **kw)

    monkeypatch.setattr(Distribution, "local_copy", local_copy)
    monkeypatch.setattr(loop, "predict_uint8", predict_uint8)
    cfg = TrainConfig(model="seed_cnn_tiny", data="sample", epochs=1, limit=64, batch_size=32, tta="flip",
                      out=str(tmp_path / "r"))
    run = loop.train(cfg, verbose=0)
    assert len(copies) == 1 and len(used) == 3  # the plain pass, then the two flip views
    assert all(m is copies[0] for m in used)
    assert json.loads((run / "metrics.json").read_text())["tta"] == "flip"
