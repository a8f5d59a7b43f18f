import numpy as np
import pytest

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def _region_dataset(n=400, seed=0):
    """Class 0: a red square in the top-left quadrant; class 1: a blue one there.
    The rest of the image is grey noise, so the evidence lives only in the top-left quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 90, (n, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 2, n)
    for i in range(n):
        r, c = rng.integers(2, 6, 2)
        x[i, r:r + 9, c:c + 9] = (230, 30, 30) if y[i] == 0 else (30, 30, 230)
    return x, y


def test_gradcam_lights_up_the_region_that_holds_the_class_signal(tmp_path):
    from PIL import Image

    from edgecnn.card import ModelCard
    from edgecnn.runtime.preprocess import normalize_batch
    from edgecnn.train.config import AugmentConfig, TrainConfig
    from edgecnn.train.gradcam import gradcam, gradcam_files
    from edgecnn.train.loop import train
    from edgecnn.train.run import load_run_model

    x, y = _region_dataset()
    np.savez(tmp_path / "region.npz", x_train=x, y_train=y, x_test=x[:80], y_test=y[:80])
    cfg = TrainConfig(model="resnet_tiny", data=str(tmp_path / "region.npz"), epochs=6, batch_size=32, lr=3e-3,
                      augment=AugmentConfig(flip=False, translate=0.0), out=str(tmp_path / "run"))
    run = train(cfg, verbose=0)
    card = ModelCard.load(run)
    assert card.metrics["test_accuracy"] > 0.8
    cams, cls, probs = gradcam(load_run_model(run), normalize_batch(x[:40], card))
    h, w = cams.shape[1:]
    top_left = cams[:, : h // 2, : w // 2].sum(axis=(1, 2))
    total = cams.sum(axis=(1, 2)) + 1e-9
    assert np.median(top_left / total) > 0.5  # a quarter of the area holds most of the heat
    Image.fromarray(x[0]).save(tmp_path / "img.png")
    rec = gradcam_files(run, [tmp_path / "img.png"], tmp_path / "cams")[0]
    assert (tmp_path / "cams" / "img.gradcam.png").stat().st_size > 1000
    assert rec["class"] in card.class_names


def test_gradcam_explains_a_transfer_model_through_its_nested_backbone():
    """The last 4-D layer of a transfer model is its keras.applications backbone, a nested model whose
    own ``output`` belongs to its inner graph: the heatmap must come from the outer call."""
    from edgecnn.train.gradcam import gradcam, target_layer
    from edgecnn.train.transfer import build_transfer_model

    model, _ = build_transfer_model("mobilenet_v2", 3, input_size=(32, 32), weights="none", backbone_input_size=64)
    assert target_layer(model).name == "backbone"
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    cams, cls, probs = gradcam(model, x)
    assert cams.shape == (2, 2, 2) and np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    # issue 21 §3: each map spans its own range (divided by its peak alone, a 2x2 map whose cells were
    # all near the peak painted the whole image red)
    flat = cams.reshape(2, -1)
    assert np.allclose(flat.max(axis=1), 1.0) and np.allclose(flat.min(axis=1), 0.0)
    assert probs.shape == (2, 3) and cls.shape == (2,)
