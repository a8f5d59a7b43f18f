"""Mixed-precision training: the choice per hardware, bf16 runs end to end, the policy never leaks."""

import json

import numpy as np
import pytest

from edgecnn.errors import ConfigError
from edgecnn.train.precision import Hardware, resolve_precision

AMX = frozenset({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"})
ZEN4 = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("requested, hw, chosen, why", [
    ("fp32", Hardware("x", AVX2), "fp32", "asked for"),
    ("auto", Hardware("x", AMX), "bf16", "amx_bf16"),
    ("auto", Hardware("x", ZEN4), "bf16", "avx512_bf16"),
    ("auto", Hardware("x", AVX2), "fp32", "no GPU"),
    ("auto", Hardware("x", AVX2, ("GPU:0",), (7, 5)), "fp16", "GPU"),
    ("auto", Hardware("x", AMX, ("GPU:0",), (9, 0)), "fp16", "GPU"),  # training runs on the GPU
    ("bf16", Hardware("x", ZEN4), "bf16", "avx512_bf16"),
    ("bf16", Hardware("x", AVX2, ("GPU:0",), (8, 0)), "bf16", "compute capability 8.0"),
    ("fp16", Hardware("x", AVX2, ("GPU:0",), (7, 0)), "fp16", "GPU"),
])
def test_precision_is_chosen_by_the_hardware(requested, hw, chosen, why):
    got, reason = resolve_precision(requested, hw)
    assert got == chosen and why in reason


@pytest.mark.parametrize("requested, hw, message", [
    ("fp16", Hardware("EPYC", ZEN4), "--precision fp16 needs a GPU"),
    ("bf16", Hardware("Xeon E5", AVX2), "--precision bf16 needs a CPU with amx_bf16 or avx512_bf16"),
    ("bf16", Hardware("x", AMX, ("GPU:0",), (7, 5)), "compute capability 8.0 or newer, this one is 7.5"),
])
def test_a_precision_the_hardware_lacks_is_a_one_line_error(requested, hw, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_precision(requested, hw)
    assert "\n" not in str(err.value)


def test_auto_reads_this_machines_cpu_flags(monkeypatch):
    """detect_hardware goes through the runtime's one /proc/cpuinfo reader."""
    from edgecnn.train import precision

    monkeypatch.setattr(precision, "cpu_model_and_flags", lambda: ("Sapphire Rapids", AMX))
    assert resolve_precision("auto")[0] == ("fp16" if precision.detect_hardware().gpus else "bf16")
    monkeypatch.setattr(precision, "cpu_model_and_flags", lambda: ("Haswell", AVX2))
    if not precision.detect_hardware().gpus:
        assert resolve_precision("auto")[0] == "fp32"
        with pytest.raises(ConfigError, match="Haswell has neither"):
            resolve_precision("bf16")


def test_unknown_precision_is_rejected_by_the_config():
    from edgecnn.train.config import TrainConfig

    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, auto, got 'int8'"):
        TrainConfig(precision="int8")
    assert TrainConfig().precision == "fp32"


@pytest.mark.tf
def test_every_zoo_model_outputs_float32_under_mixed_precision():
    import keras

    from edgecnn.train.precision import precision_policy
    from edgecnn.train.registry import build_model, list_models

    before = keras.mixed_precision.dtype_policy().name
    with precision_policy("bf16"):
        for name in [n for n in list_models() if n.endswith("_tiny")]:
            model = build_model(name, 3, input_size=(32, 32))
            convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
            assert convs[0].compute_dtype == "bfloat16" and convs[0].kernel.dtype == "float32", name
            assert model.output.dtype == "float32", name
            out = model(np.zeros((1, 32, 32, 3), np.float32))
            assert keras.backend.standardize_dtype(out.dtype) == "float32", name
    assert keras.mixed_precision.dtype_policy().name == before


@pytest.mark.tf
def test_the_policy_is_restored_when_training_fails(tmp_path):
    import keras

    from edgecnn.errors import DataError
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    with pytest.raises(DataError):
        train(TrainConfig(model="seed_cnn_tiny", data=str(tmp_path / "none.npz"), precision="auto",
                          out=str(tmp_path / "r")), verbose=0)
    assert keras.mixed_precision.dtype_policy().name == "float32"


def _needs_bf16():
    from edgecnn.runtime.cpu import cpu_model_and_flags
    from edgecnn.train.precision import BF16_CPU_FLAGS

    if not set(BF16_CPU_FLAGS) & cpu_model_and_flags()[1]:
        pytest.skip(f"this CPU has none of {BF16_CPU_FLAGS}")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """seed_cnn_tiny, 1 epoch of 256 sample images in bf16, through the CLI."""
    _needs_bf16()
    from click.testing import CliRunner

    from edgecnn.cli import main

    run = tmp_path_factory.mktemp("bf16") / "run"
    res = CliRunner().invoke(main, ["train", "--model", "seed_cnn_tiny", "--data", "sample", "--epochs", "1",
                                    "--limit", "256", "--batch-size", "64", "--precision", "bf16", "--out", str(run),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    return run


@pytest.mark.tf
def test_bf16_run_records_its_precision_and_computes_in_bfloat16(bf16_run):
    import keras

    from edgecnn.card import ModelCard
    from edgecnn.train.run import load_run_model

    assert json.loads((bf16_run / "config.json").read_text())["precision"] == "bf16"
    assert ModelCard.load(bf16_run).training["precision"] == "bf16"
    assert keras.mixed_precision.dtype_policy().name == "float32"  # nothing leaked out of the run
    model = load_run_model(bf16_run)  # loaded under float32: model.keras itself says bf16
    conv = model.get_layer("conv1")
    assert conv.dtype_policy.name == "mixed_bfloat16"
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    x = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)
    assert keras.backend.standardize_dtype(conv(x).dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(model(x).dtype) == "float32"


@pytest.mark.tf
@pytest.mark.export
def test_bf16_run_exports_an_fp32_onnx_that_passes_parity(bf16_run, tmp_path):
    import onnx

    from edgecnn.export.pipeline import ExportConfig, export_run

    report = export_run(bf16_run, out_dir=tmp_path / "export", config=ExportConfig(parity_images=64, test_images=128))
    proto = onnx.load(str(tmp_path / "export" / "model.onnx"))
    elem_types = {i.data_type for i in proto.graph.initializer} | {
        v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    assert elem_types == {onnx.TensorProto.FLOAT} or elem_types <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    assert not any(n.op_type == "Cast" for n in proto.graph.node)  # no bfloat16 round trips left in the graph
    assert report.parity["max_abs_diff"] < 1e-4
    # the fp32 export of the same weights agrees with the bf16 model itself to bfloat16's rounding
    from edgecnn.card import ModelCard
    from edgecnn.runtime import Classifier
    from edgecnn.train.loop import predict_uint8
    from edgecnn.train.run import load_run_model

    x = np.random.default_rng(1).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    bf16_probs = predict_uint8(load_run_model(bf16_run), x, ModelCard.load(bf16_run))
    onnx_probs = Classifier(tmp_path / "export" / "model.onnx").predict_proba(x)
    assert 1e-6 < np.abs(onnx_probs - bf16_probs).max() < 0.05


@pytest.mark.tf
def test_resume_of_an_unfinished_bf16_run(tmp_path, monkeypatch):
    """A bf16 run killed after epoch 1 resumes in bf16, optimizer state included."""
    _needs_bf16()
    import keras

    from edgecnn.train import loop
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.run import TrainState, load_run_model

    cfg = TrainConfig(model="seed_cnn_tiny", data="sample", epochs=2, limit=64, batch_size=32, precision="bf16",
                      out=str(tmp_path / "r"))
    real = TrainState.save

    def die_after_epoch_1(state, path):
        real(state, path)
        if path.name == "state.json" and state.epoch == 1:
            raise KeyboardInterrupt  # as a kill right after the first commit point

    monkeypatch.setattr(TrainState, "save", die_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, verbose=0)
    assert keras.mixed_precision.dtype_policy().name == "float32"
    monkeypatch.setattr(TrainState, "save", real)
    run = loop.resume(tmp_path / "r", verbose=0)
    assert json.loads((run / "history.json").read_text())["epoch"] == [1, 2]
    model = load_run_model(run, checkpoint=True)
    assert int(model.optimizer.iterations.numpy()) == 2 * 2
    assert model.get_layer("conv2").compute_dtype == "bfloat16"
    assert keras.mixed_precision.dtype_policy().name == "float32"


@pytest.mark.tf
def test_cli_fp16_without_a_gpu_fails_in_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from edgecnn.cli import main
    from edgecnn.train.precision import detect_hardware

    if detect_hardware().gpus:
        pytest.skip("this machine has a GPU: fp16 is available")
    res = CliRunner().invoke(main, ["train", "--model", "seed_cnn_tiny", "--data", "sample", "--precision", "fp16",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--precision fp16 needs a GPU" in lines[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()
