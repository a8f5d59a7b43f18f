"""`edgecnn bench --compare`: the runtime takes the Keras/LiteRT baselines from its caller."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.cli import main
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.runtime.benchmark import BenchConfig, BenchResult, run_benchmark

TINY = Path(__file__).parent / "runtime" / "data" / "tiny_nhwc.onnx"  # 8x8 NHWC, 4 classes, input "images"


@pytest.fixture()
def onnx_model(tmp_path) -> Path:
    return Path(shutil.copy(TINY, tmp_path / TINY.name))


def test_run_benchmark_calls_the_injected_baseline_runner(onnx_model, tmp_path):
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"")  # found by name; the fake runner never opens it
    calls = []

    litert = BenchResult(model="tiny", variant="tiny:int8", runner="litert", precision="int8", provider="CPU",
                         batch=1, threads=1, stats={"p50_ms": 1.0, "runs": 1})

    def fake_runner(path, card, *, config, runners, calibration_data):
        calls.append((path, card["input_size"], config["batch_sizes"], runners, calibration_data))
        return [litert]

    report = run_benchmark([onnx_model], BenchConfig(batch_sizes=(1,), warmup=0, runs=2, placement=False),
                           compare=["tflite"], keras_path=keras_file, calibration_data="cal.npz",
                           baseline_runner=fake_runner)
    assert calls == [(keras_file, [8, 8], (1,), ["litert"], "cal.npz")]
    assert [r.runner for r in report.results] == ["onnxruntime", "onnxruntime+pixels", "litert"]
    assert report.results[-1] is litert  # taken as the runner returned it, typed


def test_a_runner_returning_dicts_is_refused(onnx_model, tmp_path):
    """The BaselineRunner contract is BenchResult objects: a dict of fields is read by from_dict, not **row."""
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"")

    def dict_runner(path, card, *, config, runners, calibration_data):
        return [{"model": "tiny", "variant": "tiny:int8", "runner": "litert", "precision": "int8", "provider": "CPU",
                 "batch": 1, "threads": 1, "stats": {"p50_ms": 1.0}}]

    with pytest.raises(TypeError, match="returned a dict; it returns BenchResult"):
        run_benchmark([onnx_model], BenchConfig(batch_sizes=(1,), warmup=0, runs=1, placement=False, pixels=False),
                      compare=["keras"], keras_path=keras_file, baseline_runner=dict_runner)


def _result(**changes):
    fields = {"model": "m", "variant": "m:int8", "runner": "litert", "precision": "int8", "provider": "CPU",
              "batch": 8, "threads": 2, "stats": {"runs": 3, "p50_ms": 1.5, "throughput_ips": 5333.3},
              "session_s": 0.25, "peak_rss_mb": None, "notes": ["int8 input/output (full-int8)"], "placement": None}
    return {**fields, **changes}


def test_bench_result_from_dict_round_trips():
    r = BenchResult.from_dict(_result())
    assert r.batch == 8 and r.stats["p50_ms"] == 1.5 and r.notes == ["int8 input/output (full-int8)"]
    assert BenchResult.from_dict(r.to_dict()) == r
    short = {k: v for k, v in _result().items() if k not in ("session_s", "peak_rss_mb", "notes", "placement")}
    assert BenchResult.from_dict(short).notes == []  # the fields with defaults may be left out


@pytest.mark.parametrize(("changes", "message"), [
    ({"p50_ms": 1.0}, "no field 'p50_ms'; its fields: model, variant"),
    ({"thread": 1}, r"no field 'thread' \(did you mean 'threads'\?\)"),
    ({"batch": "8"}, r"batch is '8' \(str\), not int"),
    ({"batch": True}, r"batch is 'True' \(bool\), not int"),
    ({"stats": {"p50_ms": "fast"}}, r"stats is .* not dict\[str, float\]"),
    ({"notes": "one note"}, r"notes is 'one note' \(str\), not list\[str\]"),
])
def test_bench_result_from_dict_refuses_in_one_line(changes, message):
    with pytest.raises(ArtifactError, match=message) as err:
        BenchResult.from_dict(_result(**changes))
    assert "\n" not in str(err.value)


def test_bench_result_from_dict_names_the_missing_fields():
    with pytest.raises(ArtifactError, match="needs batch, threads"):
        BenchResult.from_dict({k: v for k, v in _result().items() if k not in ("batch", "threads")})
    with pytest.raises(ArtifactError, match="mapping of its fields, not a list"):
        BenchResult.from_dict([("model", "m")])


def test_compare_without_a_runner_is_a_config_error(onnx_model, tmp_path):
    with pytest.raises(ConfigError, match="baseline_runner"):
        run_benchmark([onnx_model], BenchConfig(batch_sizes=(1,), warmup=0, runs=1, placement=False),
                      compare=["keras"], keras_path=tmp_path)


@pytest.mark.tf
@pytest.mark.slow
def test_bench_compare_keras_and_tflite_end_to_end(onnx_model, tmp_path):
    """The CLI hands edgecnn.baselines to the runtime: Keras and LiteRT rows next to onnxruntime's."""
    from edgecnn._optional import require

    keras = require("keras", "train")
    inputs = keras.Input((8, 8, 3), name="images")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", str(onnx_model), "--compare", "keras", "--compare", "tflite",
                                  "--keras", str(tmp_path / "model.keras"), "--batch", "1", "--warmup", "1",
                                  "--runs", "3", "--no-placement", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert [x["runner"] for x in rows] == ["onnxruntime", "onnxruntime+pixels", "keras.predict", "keras.tf_function",
                                           "litert"]
    assert all(x["batch"] == 1 and x["runs"] >= 1 and np.isfinite(x["p50_ms"]) for x in rows)
    assert rows[-1]["precision"] == "int8"
