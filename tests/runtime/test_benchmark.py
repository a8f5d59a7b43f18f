"""Bench statistics on known timings, the harness, the JSON/CSV schema and the report notes."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ConfigError, InputError
from edgecnn.runtime.benchmark import (
    CSV_FIELDS,
    BenchConfig,
    BenchResult,
    _find_keras,
    bench_onnx,
    compare_notes,
    latency_stats,
    machine_fingerprint,
    parse_int_list,
    run_benchmark,
    time_callable,
)


def test_latency_stats_known_timings():
    s = latency_stats([0.001, 0.002, 0.003, 0.004], batch=8)
    assert s["runs"] == 4
    assert s["mean_ms"] == pytest.approx(2.5)
    assert s["std_ms"] == pytest.approx(np.sqrt(1.25))  # population std
    assert (s["min_ms"], s["max_ms"]) == (pytest.approx(1.0), pytest.approx(4.0))
    assert s["p50_ms"] == pytest.approx(2.5)
    assert s["p90_ms"] == pytest.approx(3.7)  # linear interpolation: 1 + 0.9 * 3
    assert s["p99_ms"] == pytest.approx(3.97)
    assert s["throughput_ips"] == pytest.approx(8 / 0.0025)


def test_latency_stats_percentiles_of_1_to_100():
    s = latency_stats([i / 1000 for i in range(1, 101)], batch=1)
    assert (s["p50_ms"], s["p90_ms"], s["p99_ms"]) == (pytest.approx(50.5), pytest.approx(90.1), pytest.approx(99.01))
    with pytest.raises(InputError):
        latency_stats([], batch=1)


def test_time_callable_counts():
    calls = []
    times = time_callable(lambda: calls.append(1), warmup=3, runs=5)
    assert len(times) == 5 and len(calls) == 8 and all(t >= 0 for t in times)
    assert len(time_callable(lambda: None, warmup=0, runs=1, duration_s=0.001, min_runs=4)) >= 4


@pytest.mark.parametrize("text, expected", [("1", (1,)), ("1,32", (1, 32)), (" 1, 8 ,", (1, 8))])
def test_parse_int_list(text, expected):
    assert parse_int_list(text, "--batch") == expected


@pytest.mark.parametrize("text", ["", "0", "a,1", "-1"])
def test_parse_int_list_rejects(text):
    with pytest.raises(ConfigError, match="--batch"):
        parse_int_list(text, "--batch")


@pytest.mark.parametrize("kwargs", [{"batch_sizes": ()}, {"threads": (0,)}, {"runs": 0}, {"duration_s": -1.0}])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        BenchConfig(**kwargs)


def _result(precision, p50, batch=1, runner="onnxruntime"):
    stats = latency_stats([p50 / 1000] * 3, batch)
    return BenchResult(model="m", variant=f"m:{precision}", runner=runner, precision=precision,
                       provider="CPUExecutionProvider", batch=batch, threads=1, stats=stats)


def test_notes_say_when_quantized_is_slower():
    slow_fp32 = dataclasses.replace(_result("fp32", 2.0), variant="m:fp32-nchw")
    notes = compare_notes([_result("fp32", 1.0), slow_fp32, _result("int8", 1.5), _result("fp16", 0.5),
                           _result("int8", 9.0, runner="litert")])
    assert len(notes) == 2  # the fastest fp32 is the reference; litert has no fp32 of its own
    assert "m:int8 is SLOWER than fp32 (1.50x the latency)" in notes[0] and "(m:fp32)" in notes[0]
    assert "m:fp16 is 2.00x faster than fp32" in notes[1]


def test_bench_onnx_and_schema(models, tmp_path):
    config = BenchConfig(batch_sizes=(1, 4), threads=(1,), warmup=1, runs=3)
    report = run_benchmark([models["nhwc"], models["nchw_logits"]], config)
    # each point twice: the model alone (input ready), then the app's call from uint8 pixels
    assert [(r.variant, r.batch, r.runner) for r in report.results] == [
        (f"tiny:fp32 (tiny_{m}.onnx)", b, runner) for m in ("nhwc", "nchw_logits") for b in (1, 4)
        for runner in ("onnxruntime", "onnxruntime+pixels")]
    r = report.results[2]
    assert r.runner == "onnxruntime" and r.provider == "CPUExecutionProvider" and r.stats["runs"] == 3
    assert r.session_s > 0 and r.peak_rss_mb > 0
    alone = run_benchmark([models["nhwc"]], BenchConfig(batch_sizes=(1,), warmup=1, runs=3, pixels=False))
    assert [r.runner for r in alone.results] == ["onnxruntime"]

    data = json.loads(report.to_json())
    assert data["schema"] == "edgecnn.bench/1"
    assert {"cpu", "simd", "usable_cpus", "onnxruntime", "date"} <= set(data["machine"])
    assert set(data["results"][0]) == set(CSV_FIELDS) | {"notes"}
    assert data["config"]["batch_sizes"] == [1, 4]

    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(rows) == 8 and list(rows[0]) == CSV_FIELDS
    assert float(rows[0]["p50_ms"]) > 0 and rows[0]["batch"] == "1"


def test_bench_on_real_pixels(models):
    px = np.zeros((4, 8, 8, 3), np.uint8)
    res = bench_onnx(models["nhwc"], BenchConfig(batch_sizes=(2,), warmup=0, runs=2), pixels=px)
    assert res[0].batch == 2


def test_plot(models, tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real_close(fig)))
    report = run_benchmark([models["nhwc"]], BenchConfig(batch_sizes=(1, 5, 12), warmup=0, runs=2))
    path = report.plot(tmp_path / "p.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    ax = closed[0].axes[0]  # issue 21 §3: the log axis labelled 2, 3, 4, 6 instead of the measured sizes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "12"]


def test_fingerprint():
    fp = machine_fingerprint()
    assert fp["logical_cpus"] >= 1 and isinstance(fp["simd"], list) and fp["onnxruntime"]


def test_compare_needs_keras_model(models, tmp_path):
    with pytest.raises(ArtifactError, match="--keras RUN_DIR"):
        _find_keras(None, ModelCard(name="t", architecture="a", class_names=["a"], input_size=(8, 8)))
    with pytest.raises(ArtifactError, match="has none"):
        _find_keras(tmp_path, None)
    with pytest.raises(ConfigError, match="Unknown --compare"):
        run_benchmark([models["nhwc"]], BenchConfig(warmup=0, runs=1), compare=["pytorch"])
