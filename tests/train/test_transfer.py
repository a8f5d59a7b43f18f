import numpy as np
import pytest

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    out = tmp_path_factory.mktemp("src") / "run"
    return train(TrainConfig(model="resnet_tiny", data="sample", classes="0-4", epochs=1, limit=256,
                             batch_size=64, out=str(out), normalization="dataset"), verbose=0)


def test_transfer_from_our_own_backbone_freezes_then_fine_tunes(tmp_path, source_run):
    from edgecnn.card import ModelCard
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train
    from edgecnn.train.run import load_run_model

    src = ModelCard.load(source_run)
    cfg = TrainConfig(backbone=str(source_run), data="sample", classes="5-9", epochs=1, fine_tune_epochs=1,
                      fine_tune_layers=4, limit=256, batch_size=64, out=str(tmp_path / "t"))
    run = train(cfg, verbose=0)
    card = ModelCard.load(run)
    assert list(card.class_names) == ["dog", "frog", "horse", "ship", "truck"]
    assert card.mean == src.mean and card.normalization.startswith("backbone:")  # the backbone's preprocessing
    model = load_run_model(run)
    backbone = model.get_layer("backbone")
    bn = [layer for layer in backbone.layers if type(layer).__name__ == "BatchNormalization"]
    assert bn and not any(layer.trainable for layer in bn)  # batch norm stays frozen when fine-tuning
    assert card.metrics["epochs"] == 2


def test_head_phase_leaves_backbone_weights_untouched(tmp_path, source_run):
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train
    from edgecnn.train.run import load_run_model

    before = load_run_model(source_run).get_layer("stem_conv").get_weights()[0]
    run = train(TrainConfig(backbone=str(source_run), data="sample", classes="5-9", epochs=1, limit=128,
                            batch_size=64, out=str(tmp_path / "h")), verbose=0)
    after = load_run_model(run).get_layer("backbone").get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(before, after)


def test_keras_applications_backbone_resizes_inside_the_model():
    from edgecnn.train.transfer import build_transfer_model

    model, pre = build_transfer_model("mobilenet_v3_small", 4, input_size=(32, 32), weights="none",
                                      backbone_input_size=64)
    assert model.input.shape[1:] == (32, 32, 3) and model.get_layer("resize").output.shape[1:3] == (64, 64)
    assert model.output.shape[-1] == 4 and not model.get_layer("backbone").trainable
    _, pre = build_transfer_model("resnet50", 2, input_size=(32, 32), weights="none", backbone_input_size=32)
    assert pre.channel_order == "BGR" and pre.mean[0] == pytest.approx(103.939)


def test_offline_imagenet_weights_name_the_local_file_option(monkeypatch, tmp_path):
    import keras

    from edgecnn.errors import ArtifactError
    from edgecnn.train.transfer import build_transfer_model

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(ArtifactError, match="--weights PATH"):
        build_transfer_model("mobilenet_v2", 3, input_size=(32, 32), weights="imagenet", backbone_input_size=96)


def test_unknown_backbone_suggests():
    from edgecnn.errors import ModelNotFoundError
    from edgecnn.train.transfer import build_transfer_model

    with pytest.raises(ModelNotFoundError, match="mobilenet_v2"):
        build_transfer_model("mobilenetv2", 3, input_size=(32, 32))
