"""`edgecnn export` through click's CliRunner: success paths, one-line errors, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.cli import main

pytestmark = [pytest.mark.tf, pytest.mark.export]


def _run(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def _one_line_error(result, match):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and match in lines[-1], result.output
    assert "Traceback" not in result.output


def test_export_run_with_int8_and_triton(tmp_path, seed_run):
    result = _run(seed_run, "--out", tmp_path / "out", "-q", "int8", "--triton", tmp_path / "triton")
    assert result.exit_code == 0, result.output
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.onnx", "model.int8.onnx", "export_report.json", "export_report.md"} <= written
    assert (tmp_path / "triton" / "seed_tiny_int8" / "1" / "model.onnx").is_file()
    assert "int8" in result.output


def _sample_npz(path, sample3, n_train=200, n_test=60):
    np.savez(path, x_train=sample3.x_train[:n_train], x_test=sample3.x_test[:n_test],
             y_test=sample3.y_test[:n_test].reshape(-1, 1))
    return path


def test_quantize_existing_onnx_without_card(tmp_path, seed_export, sample3):
    """An ONNX classifier edgecnn did not train: card from --mean/--std/--labels, npz calibration."""
    import onnx

    _, out = seed_export
    foreign = onnx.load(str(out / "model.onnx"))
    del foreign.metadata_props[:]
    onnx.save_model(foreign, str(tmp_path / "foreign.onnx"))
    (tmp_path / "labels.txt").write_text("airplane\nautomobile\nbird\n")
    npz = _sample_npz(tmp_path / "calib.npz", sample3)
    result = _run(tmp_path / "foreign.onnx", "-q", "int8", "--calibration-data", npz, "--mean", "125.3,123.0,113.9",
                  "--std", "63.0,62.1,66.7", "--labels", tmp_path / "labels.txt")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "foreign.onnx-export" / "export_report.json").read_text())
    assert report["parity"]["max_abs_diff"] == 0.0  # same graph, now with a card
    from edgecnn.export import read_card

    card = read_card(tmp_path / "foreign.onnx-export" / "model.int8.onnx")
    assert list(card.class_names) == ["airplane", "automobile", "bird"] and card.mean == (125.3, 123.0, 113.9)
    assert card.architecture == "external" and card.precision == "int8"
    # The same graph, preprocessed from the flags, scores exactly what it scores with its edgecnn card on
    # the same 60 images (the card's own onnx_test_accuracy is over all 150 test images: not comparable).
    from edgecnn.export.verify import OnnxPredictor

    probs = OnnxPredictor(out / "model.onnx", read_card(out / "model.onnx"))(sample3.x_test[:60])
    assert report["variants"][0]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == sample3.y_test[:60]),
                                                              abs=1e-9)


def test_plain_onnx_export_never_imports_tensorflow(tmp_path, seed_export, sample3):
    _, out = seed_export
    npz = _sample_npz(tmp_path / "calib.npz", sample3, n_train=64, n_test=32)
    # What loads is the point, not the accuracy: the budget is loose on purpose (32 test images).
    code = ("import sys; from edgecnn.export import export_onnx_file, ExportConfig; "
            f"export_onnx_file({str(out / 'model.onnx')!r}, out_dir={str(tmp_path / 'o')!r}, "
            f"calibration_data={str(npz)!r}, "
            "config=ExportConfig(quantize=('int8', 'fp16'), max_accuracy_drop=50)); "
            "print(sorted({'tensorflow', 'keras', 'tf2onnx', 'edgecnn.train'} & set(sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_import_direction():
    code = ("import sys, edgecnn.export, edgecnn.runtime; "
            "print(sorted({'tensorflow', 'keras', 'tf2onnx', 'onnx', 'edgecnn.train'} & set(sys.modules)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_missing_run(tmp_path):
    _one_line_error(_run(tmp_path / "nope"), "does not exist")


def test_corrupt_keras(tmp_path, seed_run):
    run = tmp_path / "run"
    run.mkdir()
    (run / "card.json").write_text((seed_run / "card.json").read_text())
    (run / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    _one_line_error(_run(run), "Cannot load")
    assert not list(run.rglob("*.onnx"))


def test_run_without_card(tmp_path):
    (tmp_path / "run").mkdir()
    _one_line_error(_run(tmp_path / "run"), "No model card")


def test_corrupt_onnx(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 10)
    _one_line_error(_run(tmp_path / "bad.onnx", "-q", "int8", "--calibration-data", tmp_path), "not a valid ONNX model")


def test_unknown_quantize_mode(seed_run):
    result = _run(seed_run, "-q", "int4")
    assert result.exit_code == 2 and "'int4' is not one of" in result.output


def test_calibration_data_of_wrong_shape(tmp_path, seed_run):
    np.savez(tmp_path / "bad.npz", images=np.zeros((40, 32, 32), np.uint8))
    _one_line_error(_run(seed_run, "--out", tmp_path / "o", "-q", "int8", "--calibration-data", tmp_path / "bad.npz"),
                    "must be (N, height, width, 3)")


def test_too_few_calibration_images(tmp_path, seed_export, sample3):
    _, out = seed_export
    np.savez(tmp_path / "few.npz", x_train=sample3.x_train[:8], x_test=sample3.x_test[:8], y_test=sample3.y_test[:8])
    _one_line_error(_run(out / "model.onnx", "--out", tmp_path / "o", "-q", "int8", "--calibration-data",
                         tmp_path / "few.npz"), "Only 8 calibration images")
    assert not (tmp_path / "o" / "model.int8.onnx").exists()


def test_failed_parity_leaves_no_model(tmp_path, seed_run):
    (tmp_path / "model.onnx").write_bytes(b"stale")  # an older result must not pass for this one
    result = _run(seed_run, "--out", tmp_path, "--atol", "1e-12")
    _one_line_error(result, "does not match its source")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".export-staging-*"))
    assert json.loads((tmp_path / "export_report.json").read_text())["status"] == "failed"


def test_interrupted_save_leaves_no_partial_onnx(tmp_path, seed_run, monkeypatch):
    import os

    def written_then_killed(src, dst):  # the model's bytes are in the temporary file, not yet renamed
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", written_then_killed)
    from edgecnn.export import ExportConfig, export_run

    with pytest.raises(KeyboardInterrupt):
        export_run(seed_run, out_dir=tmp_path, config=ExportConfig())
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("*.tmp"))


# ------------------------------------------------------- issue 21 §2.4-2.6: one folder, one export
def test_a_second_export_into_a_busy_folder_is_refused(tmp_path, seed_run):
    """Two exports into one --out both exited 0 and one silently lost: the folder is locked."""
    import fcntl
    import os

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running export holds
    try:
        _one_line_error(_run(seed_run, "--out", out), "Another edgecnn export is writing")
    finally:
        os.close(fd)
    assert list(out.iterdir()) == []
    assert _run(seed_run, "--out", out).exit_code == 0  # the lock dies with its holder


def test_a_reexport_killed_while_moving_files_in_leaves_no_mix(tmp_path, seed_run, monkeypatch):
    """kill -9 right after the new model.onnx replaced the old one left the old int8, report and
    deploy.json beside it (predict and serve followed them). Everything describing the old files
    goes first now."""
    import os

    from edgecnn.runtime.deploy import DEPLOY_FILE

    out = tmp_path / "out"
    assert _run(seed_run, "--out", out, "-q", "int8", "--max-accuracy-drop", "100").exit_code == 0
    (out / DEPLOY_FILE).write_text("{}")
    real, moved = os.replace, []

    def killed_after_the_first_model(src, dst):
        if str(dst).endswith(".onnx") and ".export-staging" not in str(dst):
            if moved:
                raise KeyboardInterrupt  # the instant of the kill
            moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_the_first_model)
    with pytest.raises(KeyboardInterrupt):
        from edgecnn.export import ExportConfig, export_run

        export_run(seed_run, out_dir=out, config=ExportConfig(quantize=("int8",), max_accuracy_drop=100.0))
    left = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert left == {"model.onnx"}, left  # this export's first file, nothing of the earlier one
    assert not (out / DEPLOY_FILE).exists() and not (out / "export_report.json").exists()


def test_default_folders_of_two_sources_with_one_stem_differ(tmp_path, seed_export):
    import shutil

    _, exported = seed_export
    for name in ("mine.onnx", "mine.tflite"):
        shutil.copy(exported / "model.onnx", tmp_path / name)
    from edgecnn.export.sources import _default_out

    assert _default_out(tmp_path / "mine.keras") != _default_out(tmp_path / "mine.h5")
    assert _default_out(tmp_path / "mine.onnx").name == "mine.onnx-export"
