import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgecnn.cli import main


def test_help_does_not_import_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from edgecnn.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "print(sorted({'tensorflow', 'keras', 'tf2onnx'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cmd", ["train", "evaluate", "models", "gradcam", "features", "export", "predict", "bench",
                                 "serve"])
def test_every_command_has_help_with_examples(cmd):
    r = CliRunner().invoke(main, [cmd, "--help"])
    assert r.exit_code == 0 and "Example" in r.output


@pytest.mark.tf
def test_models_lists_params_and_mflops():
    r = CliRunner().invoke(main, ["models", "--family", "resnet"])
    assert r.exit_code == 0, r.output
    assert "resnet20" in r.output and "274,042" in r.output and "81.6" in r.output


@pytest.mark.tf
@pytest.mark.parametrize("args, message", [
    (["--model", "resnet21"], "Did you mean: resnet20"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--data", "/nope.npz"], "does not exist"),
    (["--classes", "0-12", "--data", "sample"], "out of range"),
])
def test_bad_train_options_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--out", str(out), *args])
    assert r.exit_code == 1 and message in r.output
    assert "Traceback" not in r.output and not out.exists()


@pytest.mark.parametrize("value", ["abc", "", "0x3", "1x2x3"])
def test_a_malformed_input_size_is_a_usage_error_naming_the_flag(tmp_path, value):
    """As every other malformed flag: click's usage error (exit 2), before anything runs."""
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--input-size", value])
    assert r.exit_code == 2 and "Invalid value for --input-size" in r.output and "N or HxW" in r.output
    assert "Traceback" not in r.output and not out.exists()


@pytest.mark.parametrize("device, ok", [("GPU.1", True), ("gpu", True), ("npu", True), ("TPU", False)])
def test_openvino_device_takes_an_index_and_any_case(device, ok):
    """--device GPU.1 picks OpenVINO's second GPU (a choice list of CPU|GPU|NPU alone refused it)."""
    r = CliRunner().invoke(main, ["bench", "--device", device, "--backend", "tvm"])  # fails after the flags
    if ok:
        assert r.exit_code == 1 and "--backend takes" in r.output, r.output
    else:
        assert r.exit_code == 2 and "device must be one of CPU, GPU, NPU" in r.output


@pytest.mark.tf
def test_recipe_with_unknown_key_fails(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: seed_cnn\nepoch: 3\n")
    r = CliRunner().invoke(main, ["train", "--config", str(recipe)])
    assert r.exit_code == 1 and "did you mean epochs" in r.output


@pytest.mark.tf
def test_train_then_evaluate_through_the_cli(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: seed_cnn_tiny\nepochs: 3\nbatch_size: 32\naugment: {flip: true, translate: 0.1}\n")
    r = CliRunner().invoke(main, ["train", "--config", str(recipe), "--data", "sample", "--limit", "200",
                                  "--epochs", "1", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["epochs"] == 1  # flags override the recipe
    r = CliRunner().invoke(main, ["evaluate", str(out)])
    assert r.exit_code == 0, r.output
    assert "top-1 accuracy" in r.output and "confusion matrix" in r.output
    assert (out / "evaluation.confusion.png").is_file() or (out / "evaluation.json").is_file()
    data = json.loads((out / "evaluation.json").read_text())
    assert data["num_test"] == 500 and len(data["confusion_matrix"]) == 10
    r = CliRunner().invoke(main, ["evaluate", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "does not exist" in r.output


@pytest.mark.parametrize("args, missing, extra", [
    (["train", "--data", "sample", "--epochs", "1"], ("keras", "tensorflow"), "train"),
    (["gradcam", "x.keras", "y.png"], ("keras", "tensorflow"), "train"),
    (["bench", "--plot", "b.png", "--runs", "1"], ("matplotlib",), "plot"),
    (["serve"], ("fastapi",), "serve"),
])
def test_base_install_names_the_extra_in_one_line(tmp_path, args, missing, extra):
    """Without an extra (simulated: its modules made unimportable), a command says what to install."""
    import subprocess
    import sys

    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in missing)
            + "from edgecnn.cli import main\nmain(" + repr(args) + ")\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"pip install 'edgecnn[{extra}]'" in res.stderr
