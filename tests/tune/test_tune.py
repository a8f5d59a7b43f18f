"""``edgecnn tune``: measures every configuration of an export directory, picks within the
accuracy budget, writes deploy.json; the runtime, predict and serve follow it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.cli import main
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.runtime import Classifier, InferenceModel
from edgecnn.runtime.deploy import DEPLOY_FILE, Deployment, read_deployment, resolve_dir
from edgecnn.tune import TuneConfig, default_threads, tune
from edgecnn.tune.report import pareto

FAST = dict(seconds=0.05, images=60, confirm=2)


@pytest.fixture()
def export_dir(tmp_path, seed_export) -> Path:
    """A private copy of the shared export (fp32, int8, int8-dynamic, fp16): tune writes into it."""
    _, src = seed_export
    dst = tmp_path / "export"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("triton"))
    return dst


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, seed_export):
    _, src = seed_export
    dst = tmp_path_factory.mktemp("tuned") / "export"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("triton"))
    report = tune(dst, TuneConfig(batch_sizes=(1, 4), threads=(1, 2), max_drop_pp=5.0, **FAST))
    return dst, report


def test_tune_measures_every_configuration_and_writes_deploy_json(tuned):
    directory, report = tuned
    names = {c["config"] for c in report.candidates}
    files = {c["file"] for c in report.candidates}
    assert files == {"model.onnx", "model.int8.onnx", "model.int8-dynamic.onnx", "model.fp16.onnx"} or \
        files == {p.name for p in directory.glob("*.onnx")}
    assert {"fp32 onnxruntime", "fp32 onnxruntime iobinding", "int8 onnxruntime"} <= names
    assert any(n.startswith("fp32 openvino") for n in names)  # OpenVINO is in [dev]
    # every usable configuration x thread count x batch size has a cell
    assert len(report.cells) == len(report.candidates) * 2 * 2
    fp32 = next(c for c in report.candidates if c["config"] == "fp32 onnxruntime")
    assert fp32["drop_pp"] == 0.0 and fp32["max_abs_diff"] == 0.0
    ov = next(c for c in report.candidates if c["config"] == "fp32 openvino f32")
    assert abs(ov["drop_pp"]) < 1e-9 and ov["max_abs_diff"] < 1e-4  # f32 OpenVINO computes fp32's answers
    # the pick is the best confirmed configuration within the budget, and deploy.json says so
    dep = read_deployment(directory)
    assert dep == report.pick
    pick_row = next(c for c in report.candidates if c["file"] == dep.file and c["backend"] == dep.backend
                    and c["precision"] == (dep.precision if dep.backend == "openvino" else None)
                    and c["io_binding"] == dep.io_binding)
    assert pick_row["within_budget"] and pick_row["drop_pp"] <= 5.0
    assert dep.batch == 1 and dep.threads in (1, 2) and dep.measured["p50_ms"] > 0
    confirmed = {(c["config"], c["threads"]): c["confirmed"] for c in report.confirm}
    assert min(confirmed.values()) == dep.measured["confirmed_p50_ms"]
    assert report.pick_vs_fastest >= 1.0
    saved = json.loads((directory / "tune_report.json").read_text())
    assert saved["pick"]["file"] == dep.file and len(saved["cells"]) == len(report.cells)
    assert "Deploy model." in report.recommendation and "fp32" in report.recommendation


def test_tune_table_marks_pick_and_front(tuned):
    _, report = tuned
    cols, rows = report.table()
    assert cols[:6] == ["", "configuration", "threads", "size MB", "accuracy", "drop pp"]
    assert "p50 ms b1" in cols and "img/s b4" in cols
    assert sum("*" in r[0] for r in rows) == 1
    assert any("P" in r[0] for r in rows)
    front = [c for c in report.candidates if c["pareto"]]
    assert front and all(c["best_threads"] in (1, 2) for c in front)


def test_budget_zero_keeps_exact_configurations(export_dir):
    report = tune(export_dir, TuneConfig(threads=(1,), max_drop_pp=0.0, **FAST))
    assert report.pick.measured["drop_pp"] <= 0.0
    over = [c for c in report.candidates if not c["within_budget"]]
    assert all(c["drop_pp"] is None or c["drop_pp"] > 0 for c in over)


def test_pareto_front():
    points = {"a": (1.0, 0.5, 10.0), "b": (2.0, 0.0, 10.0), "c": (2.0, 0.5, 10.0), "d": (0.5, 2.0, 1.0)}
    assert pareto(points) == {"a", "b", "d"}  # c is beaten by a on latency and ties the rest


def test_default_threads_cover_one_to_the_cores():
    threads = default_threads()
    assert threads[0] == 1 and list(threads) == sorted(set(threads))


@pytest.mark.parametrize("kwargs, words", [
    ({"objective": "fastest"}, "--objective"),
    ({"batch_sizes": (0,)}, "Batch sizes"),
    ({"backends": ("tensorflow",)}, "--backend"),
    ({"max_drop_pp": -1.0}, "--max-drop"),
])
def test_bad_tune_config(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        TuneConfig(**kwargs)


def test_not_an_export_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no export_report.json"):
        tune(tmp_path, TuneConfig(**FAST))
    (tmp_path / "export_report.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        tune(tmp_path, TuneConfig(**FAST))
    assert not (tmp_path / DEPLOY_FILE).exists()


def test_export_report_is_read_back_typed(export_dir):
    """tune reads export_report.json through ExportReport.load: every field round-trips, a field a
    newer edgecnn added is left out, and a report missing what tune needs is refused in one line
    that names what does not fit."""
    from edgecnn.export.report import ExportReport

    path = export_dir / "export_report.json"
    data = json.loads(path.read_text())
    report = ExportReport.load(export_dir)
    assert report.to_dict() == data and report.variant("int8").file == "model.int8.onnx"
    newer = {**data, "surprise": 1, "variants": [{**v, "new_metric": 0.5} for v in data["variants"]]}
    path.write_text(json.dumps(newer))
    assert ExportReport.load(export_dir).to_dict() == data  # a newer writer's extra fields: left out
    for change, words in (({"variants": [{"file": "model.onnx"}]}, "missing"),
                          ({"variants": "model.onnx"}, "list of variants")):
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(ArtifactError, match=words):
            tune(export_dir, TuneConfig(**FAST))
    assert not (export_dir / DEPLOY_FILE).exists()


# ------------------------------------------------------------------ following deploy.json

def _write_deploy(directory: Path, **fields) -> Deployment:
    from edgecnn._files import sha256_file

    file = fields.pop("file", "model.int8.onnx")
    dep = Deployment(file=file, variant="int8", sha256=sha256_file(directory / file), **fields)
    (directory / DEPLOY_FILE).write_text(dep.to_json())
    return dep


def test_from_dir_follows_deploy_json(export_dir):
    _write_deploy(export_dir, threads=1, io_binding=True)
    clf = Classifier.from_dir(export_dir)
    assert clf.model_path.name == "model.int8.onnx" and clf.io_binding and clf.card.precision == "int8"
    assert "deploy.json" in clf.deploy_note and "1 thread" in clf.deploy_note
    px = np.zeros((2, 32, 32, 3), np.uint8)
    assert clf.predict_proba(px).shape == (2, clf.card.num_classes)


def test_from_dir_arguments_win(export_dir):
    _write_deploy(export_dir, threads=1, backend="openvino", precision="f32")
    model = InferenceModel.from_dir(export_dir, backend="onnxruntime")
    assert model.backend == "onnxruntime" and model.model_path.name == "model.int8.onnx"
    assert "backend as given" in model.deploy_note
    ov = InferenceModel.from_dir(export_dir)
    assert ov.backend == "openvino" and ov.providers == ["OpenVINO:CPU"]


def test_from_dir_without_deploy_json_takes_fp32(export_dir):
    model = InferenceModel.from_dir(export_dir)
    assert model.model_path.name == "model.onnx" and "edgecnn tune" in model.deploy_note


def test_stale_deploy_json_is_ignored(export_dir, caplog):
    _write_deploy(export_dir)
    with open(export_dir / "model.int8.onnx", "ab") as fh:  # the file changed after tuning
        fh.write(b"\0")
    with caplog.at_level(logging.WARNING):
        path, _, note = resolve_dir(export_dir)
    assert path.name == "model.onnx" and "changed since it was tuned" in caplog.text


@pytest.mark.parametrize("text, words", [
    ("{oops", "not valid JSON"),
    ('{"schema": "other/1"}', "not an edgecnn.deploy/1"),
    ('{"schema": "edgecnn.deploy/1", "file": "../../etc/passwd.onnx", "variant": "x"}', "not a model file of"),
    ('{"schema": "edgecnn.deploy/1", "variant": "x"}', "incomplete"),
    ('{"schema": "edgecnn.deploy/1", "file": "model.onnx", "variant": "x", "threads": 0}', "threads=0"),
])
def test_bad_deploy_json(export_dir, text, words):
    (export_dir / DEPLOY_FILE).write_text(text)
    with pytest.raises(ArtifactError, match=words):
        InferenceModel.from_dir(export_dir)


@pytest.mark.parametrize("change, says", [
    ({"sha256": ""}, "records no SHA-256"),
    ({"backend": "openvino", "precision": "f32"}, "on openvino, which is not installed here"),
])
def test_unverifiable_deploy_json_falls_back_to_the_verified_fp32(export_dir, caplog, monkeypatch, change, says):
    """A deploy.json without a checksum, or naming a backend this machine lacks, is ignored, and
    serve then serves model.onnx alone under its usual name, never an unverified sibling (issue 21
    §2.1, §3: "ai_edge_litert is required here" after a tune on another machine)."""
    import importlib.util

    from edgecnn.serve import ServeConfig
    from edgecnn.serve.models import load_models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    data = {**json.loads(_write_deploy(export_dir).to_json()), **change}
    (export_dir / DEPLOY_FILE).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        path, _, _ = resolve_dir(export_dir)
        served = load_models(export_dir, ServeConfig())
    assert path.name == "model.onnx" and says in caplog.text
    assert list(served) == ["model"] and served["model"].path.name == "model.onnx"


def test_deploy_json_link_out_of_the_folder_is_not_followed(export_dir, tmp_path, caplog):
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes((export_dir / "model.int8.onnx").read_bytes())
    (export_dir / "evil.onnx").symlink_to(outside)
    from edgecnn._files import sha256_file

    dep = Deployment(file="evil.onnx", variant="int8", sha256=sha256_file(outside))
    (export_dir / DEPLOY_FILE).write_text(dep.to_json())
    with caplog.at_level(logging.WARNING):
        path, _, _ = resolve_dir(export_dir)
    assert path.name == "model.onnx" and "a link leading out of" in caplog.text


@pytest.mark.parametrize("content, says", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    (b'{"schema": "edgecnn.deploy/1", "file": "model.onnx", "variant": "\xff\xfe"}'.replace(b"\\", b"\\")
     .decode("unicode_escape").encode("latin-1"), "not valid JSON"),
    ('{"schema": "edgecnn.deploy/1", "file": "model.onnx", "variant": "x", "threads": 100000}', "threads=100000"),
    ('{"schema": "edgecnn.deploy/1", "file": "model.onnx", "variant": "x", "threads": true}', "threads=True"),
    ('{"schema": "edgecnn.deploy/1", "file": "model.onnx", "variant": "x", "backend": "tensorrt"}', "backend="),
    ('{"schema": "edgecnn.deploy/1", "file": "model.onnx", "variant": "x", "batch": 10000000}', "batch="),
    ("x" * (2 << 20), "regular file of at most"),
])
def test_hostile_deploy_json_is_one_line(export_dir, content, says):
    """Nested 100k deep, invalid UTF-8, huge values, too big: one-line errors, no traceback, no hang."""
    target = export_dir / DEPLOY_FILE
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ArtifactError, match=says):
        InferenceModel.from_dir(export_dir)


def test_deploy_json_fifo_does_not_hang(export_dir):
    os.mkfifo(export_dir / DEPLOY_FILE)
    with pytest.raises(ArtifactError, match="regular file"):
        InferenceModel.from_dir(export_dir)


def test_directory_without_models(tmp_path):
    with pytest.raises(ArtifactError, match="no model.onnx"):
        InferenceModel.from_dir(tmp_path)


def test_reexport_removes_deploy_json(tmp_path, seed_run, export_dir):
    from edgecnn.export import ExportConfig, export_run

    _write_deploy(export_dir)
    (export_dir / "tune_report.json").write_text("{}")
    export_run(seed_run, out_dir=export_dir, config=ExportConfig(parity_images=16, test_images=32))
    assert not (export_dir / DEPLOY_FILE).exists() and not (export_dir / "tune_report.json").exists()


# ------------------------------------------------------------------------------------- CLI

def test_cli_tune_predict_and_serve(export_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["tune", str(export_dir), "--threads", "1", "--backend", "onnxruntime",
                                  "--seconds", "0.05", "--images", "40", "--confirm", "1", "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    assert "Deploy model." in result.output and "wrote" in result.output
    dep = read_deployment(export_dir)
    assert dep.backend == "onnxruntime" and dep.threads == 1
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(img)
    result = runner.invoke(main, ["predict", str(export_dir), str(img), "--json"])
    assert result.exit_code == 0, result.output
    assert f"Using {export_dir / DEPLOY_FILE}: {dep.file}" in result.output
    from edgecnn.serve import ServeConfig
    from edgecnn.serve.models import load_models

    served = load_models(export_dir, ServeConfig())  # the pick, under the name the directory's model always had
    assert list(served) == ["model"] and served["model"].path.name == dep.file
    assert served["model"].model.session.get_session_options().intra_op_num_threads == 1


def test_cli_tune_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["tune", str(tmp_path)])
    assert result.exit_code != 0 and "no export_report.json" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["tune", str(tmp_path), "--batch", "a"])
    assert result.exit_code != 0 and "--batch" in result.output


def test_finalists_include_each_backends_fastest():
    from edgecnn.tune import Candidate, Cell, finalist_cells

    def cell(backend, p50, variant="int8"):
        return Cell(candidate=Candidate(file="model.int8.onnx", variant=variant, backend=backend), threads=1, batch=1,
                    p50_ms=p50, mean_ms=p50, p90_ms=p50, throughput_ips=1e3 / p50, runs=10)

    ranked = [cell("onnxruntime", 1.0), cell("onnxruntime", 1.1), cell("openvino", 1.2), cell("openvino", 1.3),
              cell("litert", 1.9)]  # one noisy pass ranked LiteRT last
    finals = finalist_cells(ranked, 3)
    assert [c.p50_ms for c in finals] == [1.0, 1.1, 1.2, 1.9]
    assert finalist_cells(ranked, 1) == [ranked[0], ranked[2], ranked[4]]


def test_tune_without_images_names_its_own_flag(tmp_path, monkeypatch):
    """A model from elsewhere names no dataset: tune asks for --data, its own flag (it said
    --calibration-data, which tune does not have)."""
    monkeypatch.chdir(tmp_path)
    foreign = Path(__file__).resolve().parents[1] / "data" / "foreign" / "yolov8_shapes.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(foreign), "--out", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["tune", str(tmp_path / "exp"), "--threads", "1"])
    assert result.exit_code != 0 and "pass --data DIR_OR_NPZ" in result.output
    assert "--calibration-data" not in result.output and "Traceback" not in result.output
