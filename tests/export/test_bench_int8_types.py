"""tools/bench_int8_types.py (S8S8 vs U8S8): on a few images, its table and JSON have the rows they
claim, and the files it measured are the types it names. Speed numbers belong to docs/benchmarks.md,
never to assertions here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "bench_int8_types.py"
PACKAGED = ROOT / "edgecnn" / "assets" / "models" / "seed_cnn_cifar10.onnx"
FOREIGN = ROOT / "tests" / "data" / "foreign"


def _tool():
    spec = importlib.util.spec_from_file_location("bench_int8_types", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample_npz(tmp_path_factory) -> Path:
    from edgecnn.datasets import load_embedded_sample

    x_train, y_train, x_test, y_test = load_embedded_sample()
    path = tmp_path_factory.mktemp("data") / "sample.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _qdq_types(path: Path) -> tuple[set[str], int]:
    """The zero-point types of the activations' QuantizeLinear nodes and the largest |int8 weight|."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    act = {str(inits[n.input[2]].dtype) for n in model.graph.node
           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[0] not in inits}
    weights = [np.abs(inits[n.input[0]].astype(np.int32)).max() for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
               and inits[n.input[0]].ndim == 4]
    return act, int(max(weights))


def test_classifier_rows_and_the_files_behind_them(tmp_path, sample_npz):
    work = tmp_path / "work"
    report = _tool().main([str(PACKAGED), "--data", str(sample_npz), "--test-images", "48",
                           "--calibration-samples", "32", "--types", "U8S8,S8S8", "--x64-precision",
                           "--rounds", "1", "--runs", "1",
                           "--warmup", "0", "--work", str(work), "--json", str(tmp_path / "r.json"),
                           "--md", str(tmp_path / "r.md")])
    rows = report["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "U8S8-rr", "U8S8", "S8S8-rr", "S8S8", "U8S8+x64prec",
                                            "S8S8+x64prec"]
    # the session-option rows measure the 8-bit-weight files again: same exact columns, own cpu ones
    for base, x64 in ((rows[2], rows[5]), (rows[4], rows[6])):
        assert x64["x64quantprecision"] and not base["x64quantprecision"] and x64["reduce_range"] is False
        assert (x64["accuracy_exact"], x64["agreement_exact"]) == (base["accuracy_exact"], base["agreement_exact"])
    rows = rows[:5]
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    for r in rows:
        assert r["task"] == "classify" and r["images"] == 48 and r["metric"] == "top1_agreement"
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["agreement"] <= 1 and 0 <= r["accuracy_exact"] <= 1
        assert set(r["latency"]) == {"1", "32"} and all(v["p50_ms"] > 0 for v in r["latency"].values())
        assert len(r["loadavg_before"]) == 3
    assert rows[0]["agreement"] == 1.0 and rows[0]["accuracy"] == rows[0]["accuracy_exact"]
    assert [(r["activation_type"], r["activation_symmetric"], r["reduce_range"]) for r in rows[1:]] == [
        ("uint8", False, True), ("uint8", False, False), ("int8", True, True), ("int8", True, False)]
    table = (tmp_path / "r.md").read_text().splitlines()
    assert "AMD" in table[0] or "Intel" in table[0] or "CPU" in table[0]
    body = [line for line in table if line.startswith("| seed_cnn") and "| `" not in line]
    assert [line.split(" | ")[1] for line in body] == [r["variant"] for r in report["rows"]]
    # the decision view (also rendered again from the saved JSON): one row per target group and type
    here = report["machine"]["int8_target"]
    view = _tool().render([json.loads((tmp_path / "r.json").read_text())]).splitlines()
    by_target = [line for line in view if line.startswith("| seed_cnn") and "| `" in line]
    assert len(by_target) == 2 * (2 if here == "avx2" else 3)
    assert sum(line.endswith("| this CPU |") for line in by_target) == 2  # the target of this CPU, two types
    # the files measured are what the rows say: activation zero-point type, 7-bit weights with rr
    stem = f"{PACKAGED.parent.name}_{PACKAGED.stem}"
    for variant, act, bound in (("U8S8-rr", "uint8", 64), ("U8S8", "uint8", 127), ("S8S8-rr", "int8", 64),
                                ("S8S8", "int8", 127)):
        types, largest = _qdq_types(work / f"{stem}.{variant}.onnx")
        assert types == {act}, variant
        assert largest <= bound and (bound == 64 or largest > 64), (variant, largest)


def test_segmenter_rows_use_the_task_metric(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgecnn.cli import main as cli

    scenes = tmp_path / "scenes"
    tool = _tool()
    scenes.mkdir()
    for i, img in enumerate(tool.scenes(16, (128, 128), seed=5)[0]):
        Image.fromarray(img).save(scenes / f"{i:02d}.png")
    result = CliRunner().invoke(cli, ["export", str(FOREIGN / "lraspp_shapes.onnx"), "--out", str(tmp_path / "seg"),
                                      "--task", "segment", "--preprocess", "imagenet", "--labels",
                                      "background,red,green,blue", "--calibration-data", str(scenes)])
    assert result.exit_code == 0, result.output
    report = tool.main([str(tmp_path / "seg" / "model.onnx"), "--scenes", "6", "--calibration-samples", "16",
                        "--types", "S8S8-asym", "--reduce-range", "off", "--batches", "1,2", "--rounds", "1",
                        "--runs", "1", "--warmup", "0"])
    rows = report["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "S8S8-asym"]
    assert rows[1]["activation_type"] == "int8" and rows[1]["activation_symmetric"] is False
    assert all(r["task"] == "segment" and r["metric"] == "miou" and 0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[0]["agreement"] == 1.0 and set(rows[1]["latency"]) == {"1", "2"}


@pytest.mark.parametrize("target, reduce_range", [("avx2", True), ("vnni", False), ("arm64", False)])
def test_defaults_per_cpu_target_are_the_measured_choice(target, reduce_range):
    """docs/benchmarks.md, "S8S8 vs U8S8": U8S8 (uint8 activations, int8 per-channel weights) won or
    tied on every target, and 7-bit weights only pay on AVX2 without VNNI."""
    from edgecnn.export.quant_config import QuantizeConfig

    cfg = QuantizeConfig.for_target(target)
    assert (cfg.activation_type, cfg.weight_type, cfg.per_channel, cfg.reduce_range, cfg.target) == (
        "uint8", "int8", True, reduce_range, target)
    assert cfg.for_mode("int8").describe()["activation_type"] == "uint8"
    # an explicit override still wins over the preset (how the benchmark builds its S8S8 variants)
    assert QuantizeConfig.for_target(target, activation_type="int8").activation_type == "int8"
    section = (ROOT / "docs" / "benchmarks.md").read_text().split("S8S8 vs U8S8", 1)
    assert len(section) == 2 and f"`{target}`" in section[1], "the decision per target is recorded in the docs"
