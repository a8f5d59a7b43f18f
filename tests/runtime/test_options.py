"""RuntimeOptions, the backend registry and the one dtype table: how a model is asked to run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecnn._files import sha256_file
from edgecnn.errors import ArtifactError, ConfigError, ProviderError
from edgecnn.runtime import Classifier, InferenceModel
from edgecnn.runtime.backends import BACKENDS, REGISTRY, get_backend
from edgecnn.runtime.backends.base import DTYPES, numpy_dtype, onnx_type, v2_datatype, v2_numpy
from edgecnn.runtime.deploy import DEPLOY_FILE, Deployment, resolve_dir
from edgecnn.runtime.options import CudaOptions, RuntimeOptions

ROOT = Path(__file__).resolve().parents[2]


def _loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter holds after ``code`` (pytest's own sys.modules is shared)."""
    script = f"import json, sys; {code}; print(json.dumps(sorted(set({modules!r}) & set(sys.modules))))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_and_options_import_neither_numpy_nor_onnxruntime():
    """`edgecnn --help` reads the choice lists: importing them must not load the runtime's weight."""
    assert _loaded("import edgecnn.runtime.options", ("numpy", "onnxruntime")) == []
    assert _loaded("import edgecnn.runtime.backends", ("numpy", "onnxruntime")) == []
    assert _loaded("import edgecnn.cli", ("numpy", "onnxruntime")) == []


def test_the_package_names_load_on_first_use():
    assert _loaded("import edgecnn.runtime", ("numpy", "onnxruntime")) == []
    assert _loaded("from edgecnn.runtime import Classifier", ("numpy", "onnxruntime")) == ["numpy", "onnxruntime"]
    import edgecnn.runtime

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        edgecnn.runtime.Nope  # noqa: B018


# ------------------------------------------------------------------------------------ options

def test_merged_lets_what_was_typed_win_field_by_field():
    stored = RuntimeOptions(backend="onnxruntime", threads=1, io_binding=True)
    assert stored.merged(RuntimeOptions(threads=4)) == RuntimeOptions(backend="onnxruntime", threads=4,
                                                                       io_binding=True)
    # another backend drops this one's own settings: IO binding means nothing on OpenVINO
    assert stored.merged(RuntimeOptions(backend="openvino")) == RuntimeOptions(backend="openvino", threads=1)
    assert stored.merged(None) is stored


def test_for_backend_keeps_each_backend_its_own_settings():
    opts = RuntimeOptions(provider="cuda", io_binding=True, cuda=CudaOptions(), precision="bf16", threads=2)
    assert opts.for_backend("onnxruntime") == RuntimeOptions(backend="onnxruntime", provider="cuda", io_binding=True,
                                                             cuda=CudaOptions(), threads=2)
    assert opts.for_backend("openvino") == RuntimeOptions(backend="openvino", provider="cuda", precision="bf16",
                                                          threads=2)


@pytest.mark.parametrize(("options", "model", "backend"), [
    (RuntimeOptions(), "m.onnx", "onnxruntime"),
    (RuntimeOptions(), "m.TFLITE", "litert"),
    (RuntimeOptions(backend="onnxruntime"), "m.tflite", "litert"),  # the default cannot read it: the one that can
    (RuntimeOptions(backend="openvino"), "m.tflite", "openvino"),  # refused when it opens, by name
    (RuntimeOptions(backend="openvino"), b"bytes", "openvino"),
])
def test_backend_for(options, model, backend):
    assert options.backend_for(model) == backend


@pytest.mark.parametrize(("kwargs", "error", "says"), [
    ({"backend": "tvm"}, ProviderError, "Unknown backend 'tvm'"),
    ({"provider": "tpu"}, ProviderError, "Unknown provider 'tpu'"),
    ({"precision": "f16"}, ConfigError, "precision must be one of f32, bf16"),
    ({"device": "MYRIAD"}, ConfigError, "device must be one of"),
    ({"threads": 0}, ConfigError, "threads must be an integer >= 1"),
    ({"cuda": CudaOptions(cuda_graph=True)}, ConfigError, "--cuda-graph needs --provider cuda"),
    ({"provider": "cuda", "cuda": CudaOptions(cuda_graph=True), "io_binding": False}, ConfigError, "no-io-binding"),
])
def test_options_refuse_what_no_backend_takes(kwargs, error, says):
    with pytest.raises(error, match=says):
        RuntimeOptions(**kwargs)


def test_keywords_build_the_options_and_card_values_are_refused(models):
    clf = Classifier(models["nhwc"], RuntimeOptions(threads=1), provider="cpu")
    assert clf.options == RuntimeOptions(backend="onnxruntime", provider="cpu", threads=1)
    with pytest.raises(TypeError, match="'mean'.*overrides=ModelOverrides"):
        InferenceModel(models["nhwc"], mean=(0, 0, 0))
    with pytest.raises(TypeError, match="takes a RuntimeOptions"):
        InferenceModel(models["nhwc"], "cuda")


def test_each_backend_refuses_the_others_settings(models):
    with pytest.raises(ProviderError, match="with --backend openvino"):
        Classifier(models["nhwc"], precision="bf16")
    with pytest.raises(ConfigError, match="IO binding is onnxruntime's"):
        get_backend("openvino").check(RuntimeOptions(io_binding=True))
    with pytest.raises(ProviderError, match="are onnxruntime's"):
        get_backend("openvino").check(RuntimeOptions(provider="cuda"))
    with pytest.raises(ProviderError, match="LiteRT runs .tflite files on the CPU"):
        get_backend("litert").check(RuntimeOptions(device="GPU"))
    with pytest.raises(ProviderError, match="LiteRT runs .tflite files"):
        get_backend("litert").check_file(models["nhwc"])


# ----------------------------------------------------------------------------------- backends

def test_registry_names_platforms_and_unknown_names():
    assert BACKENDS == ("onnxruntime", "openvino", "litert") == tuple(REGISTRY)
    assert {b.platform for b in REGISTRY.values()} == {"onnxruntime_onnx", "openvino_onnx", "litert_tflite"}
    assert get_backend("onnxruntime").installed()
    with pytest.raises(ProviderError, match="Unknown backend 'tvm'; choose onnxruntime, openvino, litert"):
        get_backend("tvm")


def test_the_hot_path_is_the_sessions_own_array_call(models):
    """No wrapper between the runtime and onnxruntime's C++ run: the runner's call is the session's."""
    import onnxruntime as ort

    clf = Classifier(models["nhwc"], pixels_in_graph=False)
    runner = clf._tensor_runner()
    assert isinstance(runner.session, ort.InferenceSession) and runner.run is runner.session.run_array
    x = clf.preprocess(np.zeros((2, 8, 8, 3), np.uint8))
    np.testing.assert_array_equal(runner.run(x)[0], runner.session.run(None, {clf.input_name: x})[0])


def test_one_dtype_table():
    for row in DTYPES:
        assert onnx_type(np.dtype(row.numpy)) == row.onnx and numpy_dtype(row.onnx) == np.dtype(row.numpy)
        assert v2_datatype(row.onnx) == v2_datatype(np.dtype(row.numpy)) == row.v2
        assert onnx_type(row.openvino) == row.onnx and v2_numpy()[row.v2] == np.dtype(row.numpy)
    assert numpy_dtype("tensor(string)") == np.float32 and v2_datatype("tensor(bfloat16)") == "FP32"


# ------------------------------------------------------------------------------ deploy.json

def _export_dir(tmp_path: Path, models: dict[str, Path], **fields) -> Path:
    root = tmp_path / "export"
    root.mkdir()
    shutil.copy(models["nhwc"], root / "model.onnx")
    shutil.copy(models["nhwc"], root / "model.int8.onnx")
    dep = Deployment(file="model.int8.onnx", variant="int8", sha256=sha256_file(root / "model.int8.onnx"), **fields)
    (root / DEPLOY_FILE).write_text(dep.to_json())
    return root


def test_deploy_json_gives_runtime_options_and_typed_ones_win(tmp_path, models):
    root = _export_dir(tmp_path, models, threads=1, io_binding=True)
    path, chosen, note = resolve_dir(root)
    assert path.name == "model.int8.onnx"
    # deploy.json's device is OpenVINO's: for an onnxruntime pick it is not carried (for_backend)
    assert chosen == RuntimeOptions(backend="onnxruntime", threads=1, io_binding=True)
    assert "onnxruntime with IO binding, 1 thread" in note and "as given" not in note
    _, chosen, note = resolve_dir(root, RuntimeOptions(threads=3, provider="cpu"))
    assert chosen.threads == 3 and chosen.io_binding and note.endswith("(threads as given).")
    _, chosen, _ = resolve_dir(root, RuntimeOptions(backend="openvino"))
    assert chosen.backend == "openvino" and chosen.io_binding is None and chosen.threads == 1


def test_deploy_json_with_options_no_backend_takes_is_an_artifact_error(tmp_path, models):
    root = _export_dir(tmp_path, models, backend="openvino", precision="f16")
    with pytest.raises(ArtifactError, match="run `edgecnn tune` again"):
        Deployment.from_dict(json.loads((root / DEPLOY_FILE).read_text())).runtime()


def test_spin_reaches_onnxruntime_and_no_other_backend():
    from edgecnn.runtime.backends.onnxruntime import _session_options

    assert _session_options(None, None, spin=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert _session_options(2, None, spin=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: onnxruntime's default
        _session_options(None, None).get_session_config_entry("session.intra_op.allow_spinning")
    assert RuntimeOptions(spin=False).for_backend("openvino").spin is None
    assert RuntimeOptions.from_dict(RuntimeOptions(spin=False).to_dict()).spin is False
