"""On a CUDA device: the CUDA provider for real, IO binding, CUDA graphs, fp16, and no node on the CPU.

Every test is marked ``gpu``; tests/conftest.py skips them unless onnxruntime lists the CUDA
provider. The MobileNetV2-224 files come from tools/gpu_prepare.py (``runs/gpu_models``, or the
folder in ``EDGECNN_GPU_MODELS``); the tests that need them skip without them. Run with
``pytest -m gpu tests/runtime`` (tools/gpu_bench.py does, on the GPU machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgecnn.errors import InputError
from edgecnn.runtime import Classifier
from edgecnn.runtime.benchmark import BenchConfig, run_benchmark
from edgecnn.runtime.session import CONV_ALGO_SEARCH, CudaOptions, node_placement

pytestmark = pytest.mark.gpu

CUDA = "CUDAExecutionProvider"
ZOO_DIR = Path(os.environ.get("EDGECNN_GPU_MODELS", Path(__file__).resolve().parents[2] / "runs" / "gpu_models"))


def _zoo(name: str) -> Path:
    path = ZOO_DIR / f"mobilenet_v2_224.{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing: run tools/gpu_prepare.py here and carry runs/gpu_models")
    return path


ZOO = ["fp32.nhwc", "fp32.nchw", "fp16.nhwc", "fp16.nchw", "fp16f32io.nhwc"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(8, 224, 224, 3), dtype=np.uint8)


def test_classifier_runs_on_cuda(models, pixels):
    clf = Classifier(models["nhwc"], provider="cuda")
    assert clf.providers[0] == CUDA and clf.info.device == "cuda" and clf.info.fallback is None
    assert clf.io_binding  # the GPU default
    np.testing.assert_allclose(clf.predict_proba(pixels), Classifier(models["nhwc"]).predict_proba(pixels),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["nhwc", "nchw_logits", "nocard"])
def test_tiny_models_have_no_cpu_node(models, name):
    p = node_placement(models[name], provider="cuda")
    assert p.on_cpu == 0 and p.copies == 0, p.summary()


@pytest.mark.parametrize("io_binding", [False, True])
def test_io_binding_equals_cpu(models, pixels, io_binding):
    cpu = Classifier(models["nchw_logits"])
    gpu = Classifier(models["nchw_logits"], provider="cuda", io_binding=io_binding)
    for batch in (pixels, pixels[:1], pixels[::-1].copy(), pixels):  # shapes change and come back
        x = cpu.preprocess(batch)
        np.testing.assert_allclose(gpu.run(x), cpu.run(x), rtol=1e-4, atol=1e-5)


def test_cuda_graph_replays_give_the_same_result(models, pixels):
    cpu = Classifier(models["nhwc"])
    clf = Classifier(models["nhwc"], provider="cuda", cuda=CudaOptions(cuda_graph=True))
    assert clf.cuda_graph and clf.io_binding
    x = cpu.preprocess(pixels)
    ref = cpu.run(x)
    outs = [clf.run(x) for _ in range(5)]  # warm-up runs, capture, replays
    for out in outs:
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    y = cpu.preprocess(pixels[::-1].copy())  # new values through the same buffer
    np.testing.assert_allclose(clf.run(y), cpu.run(y), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clf.run(x), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="CUDA graph captured for input shape"):
        clf.run(x[:1])


@pytest.mark.parametrize("algo", CONV_ALGO_SEARCH)
def test_cudnn_algo_search_settings(algo, images):
    path = _zoo("fp32.nchw")
    clf = Classifier(path, provider="cuda", cuda=CudaOptions(cudnn_conv_algo_search=algo))
    assert clf.providers[0] == CUDA
    ref = Classifier(path, threads=4).predict_proba(images[:2])
    np.testing.assert_allclose(clf.predict_proba(images[:2]), ref, atol=1e-3)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_have_no_cpu_node(name):
    p = node_placement(_zoo(name), provider="cuda")
    assert p.total > 50
    assert p.on_cpu == 0, p.summary()


@pytest.mark.parametrize("name", ["fp16.nhwc", "fp16.nchw", "fp16f32io.nhwc"])
def test_fp16_models_on_cuda(name, images):
    layout = name.split(".")[1]
    ref = Classifier(_zoo(f"fp32.{layout}"), threads=4).predict_proba(images)
    clf = Classifier(_zoo(name), provider="cuda")
    assert clf.providers[0] == CUDA
    assert clf.input_dtype == (np.float32 if "f32io" in name else np.float16)
    np.testing.assert_allclose(clf.predict_proba(images), ref, atol=2e-2)


def test_fp16_cuda_graph_and_nhwc_kernels(images):
    path = _zoo("fp16.nhwc")
    ref = Classifier(path, provider="cuda").predict_proba(images)
    for opts in (CudaOptions(cuda_graph=True), CudaOptions(cuda_graph=True, prefer_nhwc=True)):
        clf = Classifier(path, provider="cuda", cuda=opts)
        for _ in range(4):
            np.testing.assert_allclose(clf.predict_proba(images), ref, atol=5e-3)


def test_bench_on_cuda_reports_placement(models):
    report = run_benchmark([models["nhwc"]], BenchConfig(batch_sizes=(1, 4), provider="cuda", warmup=2, runs=5,
                                                         cuda=CudaOptions(cuda_graph=True)))
    assert {r.provider for r in report.results} == {CUDA}
    assert {r.runner for r in report.results} == {"onnxruntime.cudagraph"}
    assert report.placement_lines() == ["tiny:fp32 [CUDA]: nodes on CPU: 0 of 3 (0%)"]
