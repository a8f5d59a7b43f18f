"""The GPU path's plumbing, checked on the CPU: CUDA provider options, reused IO binding buffers,
the CUDA-graph shape rule, float16 inputs, and the node placement parsed from ORT's profile."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgecnn.cli import main
from edgecnn.errors import ArtifactError, ConfigError, InputError, ProviderError
from edgecnn.runtime import Classifier
from edgecnn.runtime.benchmark import BenchConfig, run_benchmark
from edgecnn.runtime.runners import DeviceBinder as _DeviceBinder
from edgecnn.runtime.session import CudaOptions, NodePlacement, create_session, node_placement, parse_profile

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


# ----------------------------------------------------------------------------------- options

@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE", "enable_cuda_graph": "0"}),
    ({"cudnn_conv_algo_search": "heuristic", "cuda_graph": True, "device_id": 1},
     {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "enable_cuda_graph": "1"}),
    ({"prefer_nhwc": True}, {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE", "enable_cuda_graph": "0",
                             "prefer_nhwc": "1"}),
    ({"prefer_nhwc": False, "cudnn_conv_algo_search": "DEFAULT"},
     {"device_id": "0", "cudnn_conv_algo_search": "DEFAULT", "enable_cuda_graph": "0", "prefer_nhwc": "0"}),
])
def test_cuda_provider_options(kwargs, expected):
    assert CudaOptions(**kwargs).provider_options() == expected


@pytest.mark.parametrize("kwargs", [{"cudnn_conv_algo_search": "FASTEST"}, {"device_id": -1}, {"device_id": "0"}])
def test_cuda_options_rejected(kwargs):
    with pytest.raises(ConfigError):
        CudaOptions(**kwargs)


def test_cuda_graph_needs_cuda_and_io_binding(models):
    with pytest.raises(ConfigError, match="provider='cuda'"):
        Classifier(models["nhwc"], cuda=CudaOptions(cuda_graph=True))
    with pytest.raises(ConfigError, match="IO binding"):
        Classifier(models["nhwc"], provider="cuda", cuda=CudaOptions(cuda_graph=True), io_binding=False)
    with pytest.raises(ConfigError, match="--provider cuda"):
        BenchConfig(cuda=CudaOptions(cuda_graph=True))
    with pytest.raises(ConfigError, match="no-io-binding"):
        BenchConfig(provider="cuda", cuda=CudaOptions(cuda_graph=True), io_binding=False)
    with pytest.raises(ConfigError, match="cudnn_conv_algo_search"):
        BenchConfig(cuda=CudaOptions(cudnn_conv_algo_search="FAST"))
    assert BenchConfig().runtime().cuda is None
    graphs = CudaOptions(cuda_graph=True)
    assert BenchConfig(provider="cuda", cuda=graphs).runtime().cuda == graphs


def test_cuda_options_on_a_cpu_build(models):
    if HAS_CUDA:
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderError, match="Asked for cuda"):
        create_session(models["nhwc"], provider="cuda", cuda=CudaOptions(cuda_graph=True))
    clf = Classifier(models["nhwc"], provider="cuda", allow_fallback=True, cuda=CudaOptions(cuda_graph=True))
    assert clf.providers == ["CPUExecutionProvider"]
    assert not clf.cuda_graph and not clf.io_binding  # a CPU fallback runs the plain path
    assert clf.describe()["cuda"]["enable_cuda_graph"] == "1"


# -------------------------------------------------------------------------------- IO binding

def test_io_binding_matches_plain_run(models, pixels):
    plain, bound = Classifier(models["nhwc"]), Classifier(models["nhwc"], io_binding=True)
    assert not plain.io_binding and bound.io_binding
    x = plain.preprocess(pixels)
    x_before = x.copy()
    first = bound.run(x)
    for xb in (x[::-1].copy(), x[:2], x, x[:1]):  # new values in place, then other shapes, then back
        np.testing.assert_allclose(bound.run(xb), plain.run(xb), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(x, x_before)  # the caller's array is never a device buffer
    assert not np.shares_memory(first, bound.run(x))  # results own their memory
    np.testing.assert_allclose(bound.predict_proba(pixels), plain.predict_proba(pixels), rtol=1e-6)


def test_binder_keeps_a_few_shapes(models):
    clf = Classifier(models["nhwc"], io_binding=True)
    for n in range(1, 12):
        clf.run(np.zeros((n, 8, 8, 3), np.float32))
    assert len(clf._tensor_runner().binder._bound) == _DeviceBinder._MAX_SHAPES


def test_fixed_shape_binding_refuses_another_shape(models, pixels):
    # The CUDA-graph rule, exercised on CPU buffers: the first shape is the only one.
    clf = Classifier(models["nhwc"])
    binder = _DeviceBinder(clf.session, clf.input_name, clf.output_names, device="cpu", device_id=0, fixed_shape=True)
    x = clf.preprocess(pixels)
    np.testing.assert_allclose(binder.run(x)[0], clf.run(x), rtol=1e-6)
    np.testing.assert_allclose(binder.run(x[::-1].copy())[0], clf.run(x[::-1].copy()), rtol=1e-6)
    with pytest.raises(InputError, match=r"CUDA graph captured for input shape \(3, 8, 8, 3\); got \(2, 8, 8, 3\)"):
        binder.run(x[:2])


def _fp16_io_model(src, dst):
    onnx = pytest.importorskip("onnx")
    float16 = pytest.importorskip("onnxruntime.transformers.float16")
    onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=False), str(dst))
    return dst


@pytest.mark.export
@pytest.mark.parametrize("io_binding", [False, True])
def test_float16_input_model(models, pixels, tmp_path, io_binding):
    path = _fp16_io_model(models["nhwc"], tmp_path / "tiny.fp16.onnx")
    clf = Classifier(path, io_binding=io_binding)
    assert clf.input_dtype == np.float16
    out = clf.run(clf.preprocess(pixels))  # the float32 batch is cast to the model's float16
    assert out.dtype == np.float16
    proba = clf.predict_proba(pixels)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba, Classifier(models["nhwc"]).predict_proba(pixels), atol=2e-3)


# ---------------------------------------------------------------------------- node placement

def _event(name, op, provider=None, index=None, cat="Node"):
    args = {"op_name": op}
    if provider:
        args["provider"] = provider
    if index is not None:
        args["node_index"] = str(index)
    return {"cat": cat, "name": name, "args": args, "dur": 3}


def test_parse_profile_counts_each_node_once():
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        _event("conv1_fence_before", "Conv"),  # fences carry no provider
        _event("conv1_kernel_time", "Conv", cuda, 0),
        _event("conv1_fence_after", "Conv"),
        _event("Memcpy_kernel_time", "MemcpyToHost", cuda, 1),
        _event("shape_kernel_time", "Shape", cpu, 2),
        _event("gather_kernel_time", "Gather", cpu, 3),
        _event("fc_kernel_time", "Gemm", cuda, 4),
        _event("conv1_kernel_time", "Conv", cuda, 0),  # a second run of the same node
        {"cat": "Kernel", "name": "sm80_xmma_fprop", "args": {"provider": cuda}},  # CUPTI kernels: not nodes
    ]
    p = parse_profile(events)
    assert (p.total, p.on_cpu, p.copies) == (5, 2, 1)
    assert p.by_provider == {cuda: 3, cpu: 2}
    assert p.cpu_ops == {"Shape": 1, "Gather": 1}
    assert p.summary() == "nodes on CPU: 2 of 5 (40%) - Shape x1, Gather x1; 1 host/device copy node(s)"
    assert p.to_dict()["cpu_share"] == 0.4


@pytest.mark.parametrize(("events", "summary"), [
    ([], "nodes on CPU: 0 of 0 (0%)"),
    ([_event("a_kernel_time", "Conv", "CUDAExecutionProvider")], "nodes on CPU: 0 of 1 (0%)"),
    ([_event("a_kernel_time", "Conv", "CPUExecutionProvider")], "nodes on CPU: 1 of 1 (100%)"),
])
def test_placement_summary(events, summary):
    assert parse_profile(events).summary() == summary


def test_parse_profile_files(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"traceEvents": [_event("a_kernel_time", "Relu", "CPUExecutionProvider", 0)]}))
    assert parse_profile(f).nodes == {"a#0": ("Relu", "CPUExecutionProvider")}
    f.write_text("not json")
    with pytest.raises(ArtifactError, match="Cannot read"):
        parse_profile(f)
    f.write_text('"a string"')
    with pytest.raises(ArtifactError, match="list of events"):
        parse_profile(f)


@pytest.mark.parametrize("name", ["nhwc", "nchw_logits", "nocard"])
def test_node_placement_on_cpu_is_all_cpu(models, name):
    p = node_placement(models[name])
    assert isinstance(p, NodePlacement) and p.total >= 2
    assert p.on_cpu == p.total and p.cpu_share == 1.0 and p.copies == 0
    assert Classifier(models["nhwc"]).node_placement().summary() == "nodes on CPU: 3 of 3 (100%)"


# --------------------------------------------------------------------------------------- bench

def test_bench_io_binding_and_placement(models):
    config = BenchConfig(batch_sizes=(1, 2), warmup=1, runs=3, io_binding=True)
    report = run_benchmark([models["nhwc"]], config)
    assert [r.runner for r in report.results] == ["onnxruntime.iobinding", "onnxruntime.iobinding+pixels"] * 2
    data = report.to_dict()
    assert data["placement"] == {"tiny:fp32 [CPU]": {
        "total": 3, "on_cpu": 3, "cpu_share": 1.0, "by_provider": {"CPUExecutionProvider": 3},
        "cpu_ops": {"ReduceMean": 1, "Gemm": 1, "Softmax": 1}, "copies": 0,
        "summary": "nodes on CPU: 3 of 3 (100%)"}}
    assert data["config"]["io_binding"] is True and data["config"]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert "gpu" in data["machine"]
    no_place = run_benchmark([models["nhwc"]], BenchConfig(batch_sizes=(1,), warmup=0, runs=1, placement=False))
    assert no_place.to_dict()["placement"] == {} and no_place.results[0].runner == "onnxruntime"


def test_bench_cli_gpu_options(models):
    res = CliRunner().invoke(main, ["bench", str(models["nhwc"]), "--batch", "1", "--warmup", "0", "--runs", "2",
                                    "--io-binding"])
    assert res.exit_code == 0, res.output
    assert "onnxruntime.iobinding" in res.output and "tiny:fp32 [CPU]: nodes on CPU: 3 of 3 (100%)" in res.output
    res = CliRunner().invoke(main, ["bench", str(models["nhwc"]), "--cuda-graph"])
    assert res.exit_code == 1 and "--cuda-graph needs --provider cuda" in res.output
    res = CliRunner().invoke(main, ["bench", str(models["nhwc"]), "--no-placement", "--runs", "1", "--batch", "1"])
    assert res.exit_code == 0 and "nodes on CPU" not in res.output
    if not HAS_CUDA:
        res = CliRunner().invoke(main, ["bench", str(models["nhwc"]), "--provider", "cuda", "--cuda-graph",
                                        "--cudnn-conv-algo-search", "heuristic", "--prefer-nhwc", "--allow-fallback",
                                        "--runs", "1", "--batch", "1"])
        assert res.exit_code == 0, res.output
        assert "nodes on CPU: 3 of 3" in res.output and "Asked for cuda" in res.output
