"""Accuracy-aware int8 on a model built to break plain int8 in one known place.

The model: Conv -> Relu -> Conv -> Relu -> Conv -> GlobalAveragePool -> Gemm -> Softmax. The
middle Conv's last output channel carries a bias of 2000, so its (per-tensor, uint8) activation
range is about [0, 2000] and the three quiet channels, all the next Conv reads, quantize to a few
levels: plain int8 loses most top-1 answers. Keeping the middle Conv and its consumer in float is
the fix; the ranking must find exactly that tensor first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.export]

_OUTLIER_BIAS = 2000.0


def _outlier_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32)
    b2 = np.array([0.1, 0.1, 0.1, _OUTLIER_BIAS], np.float32)  # channel 3: the outlier
    w3 = rng.normal(0, 0.5, (6, 4, 1, 1)).astype(np.float32)
    w3[:, 3] = 0.0  # ... which the next Conv ignores: all the signal is in the quiet channels
    wfc = rng.normal(0, 1.0, (6, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (wfc, "wfc"), (np.zeros(3, np.float32), "bfc"))]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2_outlier"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                               ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    from edgecnn.card import ModelCard
    from edgecnn.export.verify import OnnxPredictor

    root = tmp_path_factory.mktemp("aa")
    path = _outlier_model(root / "outlier.onnx")
    card = ModelCard(name="outlier", class_names=("a", "b", "c"), input_size=(8, 8), layout="nchw",
                     input_name="images", output_name="probabilities")
    images = np.random.default_rng(1).integers(0, 256, (96, 8, 8, 3), dtype=np.uint8)
    reference = OnnxPredictor(path, card).outputs(images)[0].argmax(1)

    def agreement(candidate: Path) -> float:
        return float(np.mean(OnnxPredictor(candidate, card).outputs(images)[0].argmax(1) == reference))

    return path, card, images, agreement


def _search(outlier, tmp_path, **overrides):
    from edgecnn.export.accuracy_aware import AccuracyAwareConfig, accuracy_aware_quantize
    from edgecnn.export.quant_config import QuantizeConfig

    path, card, images, agreement = outlier
    evaluate = overrides.pop("evaluate", agreement)
    config = AccuracyAwareConfig(**{"max_drop": 0.01, "metric_name": "top1_agreement", "timing_runs": 5, **overrides})
    return accuracy_aware_quantize(path, tmp_path / "int8.onnx", card=card,
                                   quant=QuantizeConfig.for_target("vnni", calibration_samples=64).static_int8(),
                                   calibration_images=images, evaluate=evaluate, baseline=1.0, config=config)


def test_plain_int8_fails_and_the_outlier_node_is_kept_in_float(outlier, tmp_path):
    import onnx

    result = _search(outlier, tmp_path)
    assert result.plain_metric < 0.9  # plain int8 really breaks on the outlier channel
    assert result.passed and result.recovered and result.metric >= 0.99
    assert result.ranking[0].tensor == "r2" and result.ranking[0].kind == "activation"
    assert set(result.excluded_nodes) == {"conv2_outlier", "conv3"}  # the tensor's producer and consumer only
    assert len(result.attempts) == 1 and result.attempts[0].passed
    ops = {n.name: n.op_type for n in result.proto.graph.node}
    dq_inputs = {i for n in result.proto.graph.node if n.op_type == "DequantizeLinear" for i in n.input}
    assert "w2_quantized" not in dq_inputs and "w3_quantized" not in dq_inputs  # float weights
    assert ops["conv1"] == "Conv" and any(i.startswith("w1") for i in dq_inputs)  # the rest stays int8
    assert onnx.load(str(tmp_path / "int8.onnx")).graph.node  # written where asked
    assert set(result.latency_ms) == {"fp32", "int8", "int8-accuracy-aware"}
    # a model this small is mostly Q/DQ scaffolding: no size ordering, but the sizes are the files'
    assert result.size_bytes == (tmp_path / "int8.onnx").stat().st_size and result.plain_size_bytes > 0
    summary = result.to_dict()
    assert summary["nodes_kept_float"] == list(result.excluded_nodes) and summary["nodes_kept_float_count"] == 2
    assert "kept 2 node(s) in float" in result.message


def test_plain_int8_within_budget_keeps_everything_quantized(outlier, tmp_path):
    result = _search(outlier, tmp_path, max_drop=1.0, timing_runs=0)  # any agreement passes
    assert result.passed and not result.recovered and result.excluded_nodes == () and result.attempts == ()
    assert result.ranking == () and result.latency_ms == {}
    result.raise_for_status()


def test_unreachable_budget_stops_within_the_retry_cap_with_one_line(outlier, tmp_path):
    from edgecnn.errors import AccuracyDropError

    result = _search(outlier, tmp_path, evaluate=lambda path: 0.5, max_retries=2, timing_runs=0)
    assert not result.passed and len(result.attempts) == 2
    everything_but_one = {n for e in result.ranking[:-1] for n in e.nodes}
    assert set(result.attempts[-1].excluded) == everything_but_one  # the deciding configuration was tried
    with pytest.raises(AccuracyDropError) as err:
        result.raise_for_status()
    message = str(err.value)
    assert "\n" not in message and message.startswith("Accuracy-aware int8 could not meet the budget")
    assert "--calibration-method" in message and "--cpu-target" in message


@pytest.mark.parametrize(("limit", "retries", "sizes"), [
    (1, 5, [1]), (2, 5, [1, 2]), (5, 10, [1, 2, 4, 5]), (8, 10, [1, 2, 4, 8]),
    (100, 10, [1, 2, 4, 8, 16, 32, 64, 100]), (100, 3, [1, 2, 100]), (100, 1, [100]),
])
def test_schedule_grows_and_always_ends_at_the_limit(limit, retries, sizes):
    from edgecnn.export.accuracy_aware import _schedule

    assert _schedule(limit, retries) == sizes


def test_channel_sqnr_sees_quiet_channels_crushed_next_to_a_loud_one():
    from edgecnn.export._qdq_ranking import _channel_sqnr

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 2, 3, 3))
    x[:, 1] += 1000
    crushed = x.copy()
    crushed[:, 0] = 0.0  # what a [0, 1001] uint8 scale does to channel 0
    whole = _channel_sqnr([x.ravel()], [crushed.ravel()], None, axis=1)
    per_channel = _channel_sqnr([x.ravel()], [crushed.ravel()], (None, 2, 3, 3), axis=1)
    assert whole > 50 and per_channel < 35


@pytest.mark.parametrize(("method", "target", "aa", "present", "absent"), [
    ("minmax", "avx2", False, ["--accuracy-aware", "entropy or percentile", "--cpu-target vnni"], []),
    ("percentile", "vnni", False, ["--accuracy-aware", "entropy or minmax"], ["--cpu-target"]),
    ("entropy", "avx2", True, ["percentile or minmax", "--cpu-target"], ["--accuracy-aware"]),
])
def test_guard_hints_name_the_flags_that_could_help(method, target, aa, present, absent):
    from edgecnn.export.guard import guard_hints
    from edgecnn.export.quant_config import QuantizeConfig

    text = guard_hints(QuantizeConfig.for_target(target, calibration_method=method), accuracy_aware=aa,
                       int8_failed=True)
    assert all(p in text for p in present) and not any(a in text for a in absent)


def test_config_rejects_impossible_values():
    from edgecnn.errors import ConfigError
    from edgecnn.export.accuracy_aware import AccuracyAwareConfig

    for bad in ({"max_drop": -0.1}, {"max_drop": float("nan")}, {"max_drop": 0.01, "max_retries": 0},
                {"max_drop": 0.01, "ranking_images": 0}):
        with pytest.raises(ConfigError):
            AccuracyAwareConfig(**bad)


def test_export_cli_accuracy_aware_recovers_what_plain_int8_fails(outlier, tmp_path):
    """`edgecnn export MODEL -q int8` fails the guard and names --accuracy-aware; with it, it passes."""
    import json

    from click.testing import CliRunner
    from PIL import Image

    from edgecnn.cli import main

    path, _, images, _ = outlier
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images[:48]):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    args = ["export", str(path), "-q", "int8", "--calibration-data", str(folder), "--preprocess", "unit",
            "--cpu-target", "vnni", "--labels", "a,b,c"]
    plain = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 1 and "Traceback" not in plain.output
    assert "--accuracy-aware" in plain.output and "--calibration-method entropy or percentile" in plain.output
    assert not (tmp_path / "plain" / "model.int8.onnx").exists()
    run = CliRunner().invoke(main, [*args, "--accuracy-aware", "--out", str(tmp_path / "aa")])
    assert run.exit_code == 0, run.output
    assert "kept 2 node(s) in float (conv2_outlier, conv3)" in run.output
    report = json.loads((tmp_path / "aa" / "export_report.json").read_text())
    int8 = next(v for v in report["variants"] if v["precision"] == "int8")
    aa = int8["accuracy_aware"]
    assert int8["passed"] and aa["nodes_kept_float"] == ["conv2_outlier", "conv3"] and aa["nodes_kept_float_count"] == 2
    assert aa["plain_metric"] < 0.9 <= aa["metric"] and aa["size_bytes"] < int8["size_bytes"]  # + the card
    assert {"conv2_outlier", "conv3"} <= set(int8["settings"]["exclude_nodes"])  # the card says so too
    md = (tmp_path / "aa" / "export_report.md").read_text()
    assert "## Accuracy-aware int8" in md and "`conv2_outlier`, `conv3`" in md


def test_export_fails_in_one_line_when_the_search_cannot_meet_the_budget(outlier, tmp_path, monkeypatch):
    """A ranking that misses the culprit: the search gives up within its cap, nothing int8 is written."""
    from click.testing import CliRunner
    from PIL import Image

    from edgecnn.cli import main
    from edgecnn.export import accuracy_aware

    def useless_ranking(fp32_path, qdq_path, *, card, images, candidates=32):
        return (accuracy_aware.QuantError(tensor="w1", kind="weight", sqnr_db=10.0, nodes=("conv1",)),
                accuracy_aware.QuantError(tensor="wfc", kind="weight", sqnr_db=20.0, nodes=("fc",)))

    monkeypatch.setattr(accuracy_aware, "rank_quantization_errors", useless_ranking)
    path, _, images, _ = outlier
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(images[:32]):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    run = CliRunner().invoke(main, ["export", str(path), "-q", "int8", "--accuracy-aware", "--calibration-data",
                                    str(folder), "--preprocess", "unit", "--labels", "a,b,c", "--out",
                                    str(tmp_path / "out")])
    assert run.exit_code == 1 and "Traceback" not in run.output
    error = next(line for line in run.output.splitlines() if line.startswith("Error:"))
    assert "accuracy-aware int8 could not meet the budget" in error and "with up to 1 of" in error
    assert "--calibration-method" in error and "Try --accuracy-aware" not in error  # it was on already
    assert not (tmp_path / "out" / "model.int8.onnx").exists() and (tmp_path / "out" / "model.onnx").is_file()
