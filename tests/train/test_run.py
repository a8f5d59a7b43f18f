"""The run directory module: the typed training state reads the state.json files edgecnn has
always written (a run killed before the state became a type still resumes) and writes the same JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgecnn.errors import ArtifactError
from edgecnn.train.run import Preprocessing, RunFiles, TrainState, write_json

# state.json as the loop wrote it before TrainState (the dict with its '_t0' key filtered out),
# after the first of two head epochs of a run on the embedded sample.
OLD_STATE = {
    "phase": "head", "epoch": 1, "done": False, "checkpoint": "checkpoint-e0001.keras",
    "preprocessing": {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0], "channel_order": "RGB",
                      "normalization": "scale"},
    "history": {"loss": [1.25], "accuracy": [0.4], "val_loss": [1.1], "val_accuracy": [0.5], "epoch": [1],
                "phase": ["head"], "time_s": [3.21]},
    "dataset": {"name": "sample", "num_train": 57, "num_val": 7, "num_test": 100},
    "class_names": ["airplane", "automobile", "bird"],
}


def test_an_old_state_file_loads_and_saves_as_the_same_json(tmp_path):
    old = tmp_path / "old.json"
    write_json(old, OLD_STATE)  # how the loop wrote it: sorted keys, indent 2
    state = TrainState.load(old)
    assert state.epoch == 1 and state.phase == "head" and state.checkpoint == "checkpoint-e0001.keras"
    assert state.preprocessing == Preprocessing(mean=(0, 0, 0), std=(255, 255, 255), normalization="scale")
    assert state.class_names == ("airplane", "automobile", "bird") and state.train_time_s == 3.21
    state.save(tmp_path / "new.json")
    assert (tmp_path / "new.json").read_text() == old.read_text()
    assert RunFiles(tmp_path).current_checkpoint(state) == tmp_path / "checkpoint-e0001.keras"


def test_a_state_of_edgecnn_0_1_names_no_checkpoint(tmp_path):
    """Runs of edgecnn 0.1 kept one checkpoint.keras and a state without 'checkpoint' (nor 'done')."""
    old = {k: v for k, v in OLD_STATE.items() if k not in ("checkpoint", "done")}
    (tmp_path / "state.json").write_text(json.dumps(old))
    state = TrainState.load(tmp_path / "state.json")
    assert state.checkpoint is None and not state.done
    assert RunFiles(tmp_path).current_checkpoint(state) == tmp_path / "checkpoint.keras"
    assert "checkpoint" not in state.to_dict()


def test_an_epoch_makes_a_new_state_and_leaves_the_old_one_alone():
    state = TrainState.from_dict(OLD_STATE)
    after = state.after_epoch(2, {"loss": 0.9, "accuracy": 0.6}, time_s=6.5, checkpoint="checkpoint-e0002.keras")
    assert after.epoch == 2 and after.checkpoint == "checkpoint-e0002.keras" and after.train_time_s == 6.5
    assert after.history["loss"] == [1.25, 0.9] and after.history["epoch"] == [1, 2]
    assert after.history["phase"] == ["head", "head"]
    assert state.history["loss"] == [1.25] and state.epoch == 1  # unchanged
    assert after.replace(phase="finetune").after_epoch(3, {}, time_s=9.0, checkpoint="c").history["phase"][-1] == \
        "finetune"


@pytest.mark.parametrize("text, message", [
    ("{not json", "state.json is corrupt (JSONDecodeError)"),
    ("[1, 2]", "is not an edgecnn training state"),
    (json.dumps({**OLD_STATE, "epoch": "1"}), "epoch must be an integer"),
    (json.dumps({k: v for k, v in OLD_STATE.items() if k != "history"}), "no history"),
    (json.dumps({**OLD_STATE, "phase": "warmup"}), "phase must be one of head, finetune"),
    (json.dumps({**OLD_STATE, "extra": 1}), "unknown keys ['extra']"),
    (json.dumps({**OLD_STATE, "preprocessing": {"mean": [0, 0, 0]}}), "std"),
])
def test_a_bad_state_file_is_one_artifact_error(tmp_path, text, message):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(ArtifactError, match="start the run again with --overwrite|start it again") as err:
        TrainState.load(tmp_path / "state.json")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_state_file_says_the_directory_is_no_resumable_run(tmp_path):
    with pytest.raises(ArtifactError, match="has no state.json: it is not a run that can be resumed"):
        TrainState.load(tmp_path / "state.json")


def test_reading_a_run_needs_no_tensorflow():
    code = ("import sys, edgecnn.train.run, edgecnn.train.evaluate, edgecnn.train.transfer; "
            "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
