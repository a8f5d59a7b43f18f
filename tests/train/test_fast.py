"""The fast recipe (models/fast_cifar10.yaml, after airbench94): whitening init, Lookahead,
alternating flips, test-time augmentation, and a recipe run that trains, resumes and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parents[2]


def _normalized(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))


# ----------------------------------------------------------------------------- whitening init

def test_whitening_init_decorrelates_the_patches(sample_data):
    import keras

    from edgecnn.train.hooks import WHITEN_EPS, whiten_init
    from edgecnn.train.registry import build_model

    x = _normalized(sample_data[0][:300])
    model = build_model("fast_cifar_tiny", 10)
    eigenvalues = whiten_init(model, x)
    assert np.all(np.diff(eigenvalues) <= 0) and eigenvalues[-1] > 0  # descending, positive definite
    # Natural images' neighbouring pixels and channels are strongly correlated: far from white.
    assert eigenvalues[0] / eigenvalues[-1] > 100
    out = keras.Model(model.inputs, model.get_layer("whiten").output).predict(x, verbose=0).reshape(-1, 24)
    cov = out[:, :12].T @ out[:, :12] / len(out)
    # Each eigen-direction comes out with variance lambda / (lambda + eps): ~1, and uncorrelated.
    np.testing.assert_allclose(np.diag(cov), eigenvalues / (eigenvalues + WHITEN_EPS), rtol=2e-3)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 2e-3
    # The negatives, for the GELU after it: equal up to float32 rounding. Bit-exact on AVX-512 CPUs;
    # oneDNN's AVX2 convolution sums in another order (1.5e-5 apart on outputs of magnitude ~2 on an
    # AVX2-only AMD EPYC), so a sign error (a difference of 2x the output) is what this catches.
    np.testing.assert_allclose(out[:, 12:], -out[:, :12], rtol=0, atol=1e-5 * np.abs(out).max())
    assert not model.get_layer("whiten").trainable


def test_whiten_init_refuses_a_model_without_a_whitening_conv(tmp_path):
    from edgecnn.errors import ConfigError
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    cfg = TrainConfig(model="seed_cnn_tiny", data="sample", epochs=1, limit=64, whiten_init=True,
                      out=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="whiten_init needs a model with a 'whiten' conv"):
        train(cfg, verbose=0)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------- Lookahead

def test_lookahead_syncs_every_k_steps_and_at_each_epoch_end():
    import keras

    from edgecnn.train.config import LookaheadConfig
    from edgecnn.train.hooks import Lookahead

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(56, 4)).astype("float32"), rng.normal(size=(56, 2)).astype("float32")
    cfg = LookaheadConfig(every=3, start_epoch=1, decay=0.9, power=1.0)
    lookahead = Lookahead(cfg, total_steps=21)
    seen = []

    class Before(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            slow = None if lookahead.slow is None else [s.copy() for s in lookahead.slow]
            seen.append({"fast": [np.array(w) for w in lookahead._weights()], "slow": slow})

    class After(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen[-1]["after"] = [np.array(w) for w in lookahead._weights()]
            seen[-1]["step"], seen[-1]["batch"] = int(self.model.optimizer.iterations.numpy()), batch

    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[Before(), lookahead, After()])
    # 2 x (kernel, bias), BN gamma, beta, moving mean, variance
    assert len(seen) == 21 and len(lookahead._weights()) == 8
    for rec in seen[:7]:  # epoch 0: before start_epoch, the weights are the optimizer's alone
        assert rec["slow"] is None
    syncs = 0
    for rec, nxt in zip(seen[7:], seen[8:] + [None]):
        if rec["step"] % 3 == 0:  # slow += (1 - rho) (fast - slow), and the model takes it
            rho = 0.9 ** 3 * rec["step"] / 21
            for slow, fast, after in zip(rec["slow"], rec["fast"], rec["after"]):
                np.testing.assert_allclose(after, slow + (1 - rho) * (fast - slow), rtol=1e-5, atol=1e-6)
            syncs += 1
        elif rec["batch"] == 6:  # an epoch's last step: the model takes the slow weights
            for slow, after in zip(rec["slow"], rec["after"]):
                np.testing.assert_array_equal(after, slow)
        else:  # in between: the fast weights move on their own and the slow copy waits
            assert all(np.array_equal(f, a) for f, a in zip(rec["fast"], rec["after"]))
            assert not all(np.array_equal(a, s) for a, s in zip(rec["after"], rec["slow"]))
            assert all(np.array_equal(s, n) for s, n in zip(rec["slow"], nxt["slow"]))
    assert syncs == 5  # steps 9, 12, 15, 18, 21
    moving_mean = [i for i, w in enumerate(lookahead._weights()) if "moving_mean" in w.path][0]
    assert not np.allclose(seen[-1]["after"][moving_mean], 0.0)  # batch-norm statistics are averaged too


def test_the_whitening_bias_trains_for_its_epochs_then_holds(tmp_path):
    """whiten_bias_epochs: 1 -> the bias moves in epoch 1 and keeps epoch 2's starting value after,
    while the other weights go on training (airbench freezes it after 3 epochs)."""
    import keras

    from edgecnn.train import loop
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.hooks import WHITEN_BIAS_LAYER

    seen: list[tuple[int, np.ndarray, np.ndarray]] = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, np.array(self.model.get_layer(WHITEN_BIAS_LAYER).weights[0]),
                         np.array(self.model.get_layer("head").kernel)))

    real_fit = keras.Model.fit

    def fit(self, *args, callbacks=(), **kwargs):
        return real_fit(self, *args, callbacks=[*callbacks, Watch()], **kwargs)

    start = {}
    real_init = loop._data_init

    def data_init(model, *args):
        real_init(model, *args)
        start["bias"] = np.array(model.get_layer(WHITEN_BIAS_LAYER).weights[0])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.Model, "fit", fit)
        mp.setattr(loop, "_data_init", data_init)
        loop.train(TrainConfig.from_dict(_recipe(tmp_path, epochs=3, whiten_bias_epochs=1)), verbose=0)
    assert [e for e, _, _ in seen] == [0, 1, 2]
    assert not np.allclose(seen[0][1], start["bias"])  # epoch 1 trains it
    np.testing.assert_array_equal(seen[1][1], seen[0][1])  # then it stays, Lookahead included
    np.testing.assert_array_equal(seen[2][1], seen[0][1])
    assert not np.allclose(seen[2][2], seen[1][2])  # while the rest trains on


def test_whiten_bias_epochs_refuses_a_model_without_a_whitening_bias(tmp_path):
    from edgecnn.errors import ConfigError
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    with pytest.raises(ConfigError, match="whiten_bias_epochs must be >= 0"):
        TrainConfig(model="fast_cifar_tiny", whiten_bias_epochs=-1)
    cfg = TrainConfig(model="seed_cnn_tiny", data="sample", epochs=1, limit=64, whiten_bias_epochs=3,
                      out=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="needs a model with a 'whiten_bias' layer"):
        train(cfg, verbose=0)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------- augmentation

def _id_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (left-right asymmetric) images whose label is their index."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n)


def _epochs(x, y, *, epochs, seed=0, **aug):
    from edgecnn.train.config import AugmentConfig
    from edgecnn.train.pipeline import make_dataset

    ds = make_dataset(x, y, num_classes=len(x), batch_size=16, mean=(0, 0, 0), std=(1, 1, 1), training=True,
                      augment=AugmentConfig(**{"translate": 0.0, **aug}), seed=seed, epochs=epochs)
    out, per_epoch = [], -(-len(x) // 16)
    batches = [(i.numpy(), labels.numpy().argmax(1)) for i, labels in ds]
    assert len(batches) == per_epoch * (epochs[1] - epochs[0])
    for e in range(epochs[1] - epochs[0]):
        chunk = batches[e * per_epoch:(e + 1) * per_epoch]
        images, ids = np.concatenate([c[0] for c in chunk]), np.concatenate([c[1] for c in chunk])
        assert sorted(ids) == list(range(len(x)))  # every image once per epoch
        order = np.argsort(ids)
        out.append((images[order], ids))
    return out


def test_alternating_flip_is_deterministic_and_alternates_per_epoch():
    x, y = _id_images(40)
    epochs = _epochs(x, y, epochs=(0, 4), flip="alternate")
    flipped = []
    for images, _ in epochs:
        mirrored = np.all(images == x[:, :, ::-1].astype(np.float32), axis=(1, 2, 3))
        plain = np.all(images == x.astype(np.float32), axis=(1, 2, 3))
        assert np.all(mirrored ^ plain)  # each image exactly as it is or mirrored
        flipped.append(mirrored)
    assert 10 <= flipped[0].sum() <= 30  # about half the images in the first epoch
    for e in range(1, 4):  # and the other half in the next: every image seen both ways per 2 epochs
        np.testing.assert_array_equal(flipped[e], flipped[0] ^ bool(e % 2))
    assert not np.array_equal(epochs[0][1], epochs[1][1])  # a new order each epoch
    # Deterministic: a run resumed at epoch 2 sees exactly epochs 2 and 3, order included.
    resumed = _epochs(x, y, epochs=(2, 4), flip="alternate")
    for (a, ids_a), (b, ids_b) in zip(epochs[2:], resumed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ids_a, ids_b)
    other_seed = _epochs(x, y, epochs=(0, 1), seed=1, flip="alternate")
    assert not np.array_equal(other_seed[0][0], epochs[0][0])


def test_whole_pixel_translation_is_a_reflect_padded_shift():
    x, y = _id_images(24, seed=1)
    (images, _), = _epochs(x, y, epochs=(0, 1), flip=False, translate_px=2)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect").astype(np.float32)
    offsets = set()
    for i, img in enumerate(images):
        match = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(img, padded[i, dy:dy + 8, dx:dx + 8])]
        assert match, f"image {i} is no whole-pixel shift of its original"
        offsets.add(match[0])
    assert len(offsets) > 5  # each image at its own offset


def test_epoch_dependent_augmentation_needs_the_epochs():
    from edgecnn.train.config import AugmentConfig
    from edgecnn.train.pipeline import make_dataset

    x, y = _id_images(8)
    with pytest.raises(ValueError, match="epochs"):
        make_dataset(x, y, num_classes=8, batch_size=4, mean=(0, 0, 0), std=(1, 1, 1), training=True,
                     augment=AugmentConfig(flip="alternate"))


def test_augment_and_lookahead_config_validation():
    from edgecnn.errors import ConfigError
    from edgecnn.train.config import AugmentConfig, TrainConfig

    with pytest.raises(ConfigError, match="flip must be"):
        AugmentConfig(flip="sometimes")
    with pytest.raises(ConfigError, match="exclusive with translate"):
        AugmentConfig(translate_px=2)  # translate keeps its 0.125 default
    with pytest.raises(ConfigError, match="lookahead needs"):
        TrainConfig(lookahead={"every": 0})
    with pytest.raises(ConfigError, match="Unknown lookahead key"):
        TrainConfig(lookahead={"evry": 5})
    with pytest.raises(ConfigError, match="tta must be one of"):
        TrainConfig(tta="mirror")
    from edgecnn.train.evaluate import evaluate

    with pytest.raises(ConfigError, match="Unknown test-time augmentation 'mirror'"):
        evaluate("nowhere", tta="mirror")


# ---------------------------------------------------------------------- test-time augmentation

def test_tta_averages_the_logits_of_the_views(rng):
    from edgecnn.train.evaluate import tta_predict, tta_views

    x = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    weights = rng.normal(size=(6 * 6 * 3, 4))

    def logits(images):
        return images.reshape(len(images), -1).astype(np.float64) / 255 @ weights

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    flip = tta_predict(lambda v: softmax(logits(v)), x, "flip")
    np.testing.assert_allclose(flip, softmax((logits(x) + logits(x[:, :, ::-1])) / 2), rtol=1e-5)
    assert not np.allclose(flip, softmax(logits(x)))  # the mirror view changed the answer
    np.testing.assert_array_equal(tta_predict(lambda v: softmax(logits(v)), x, "none"), softmax(logits(x)))
    views = tta_views(x, "flip+shift")
    assert len(views) == 6 and abs(sum(w for w, _ in views) - 1) < 1e-12
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(views[2][1], padded[:, :6, :6])  # shifted down-right by one pixel
    np.testing.assert_array_equal(views[5][1], padded[:, 2:, 2:][:, :, ::-1])
    symmetric = np.concatenate([x[:, :, :3], x[:, :, :3][:, :, ::-1]], axis=2)  # mirror-symmetric images
    np.testing.assert_allclose(tta_predict(lambda v: softmax(logits(v)), symmetric, "flip"),
                               softmax(logits(symmetric)), rtol=1e-6)


# ------------------------------------------------------------------------- the recipe, end to end

def _recipe(tmp_path: Path, **changes) -> dict:
    from edgecnn.train.config import load_recipe

    recipe = load_recipe(ROOT / "models" / "fast_cifar10.yaml")
    recipe.update({"model": "fast_cifar_tiny", "data": "sample", "limit": 384, "epochs": 4, "batch_size": 64,
                   "val_split": 0.1, "out": str(tmp_path / "run"), **changes})
    recipe["lookahead"] = {**recipe["lookahead"], "start_epoch": 1}
    return recipe


def test_the_recipe_trains_and_exports_with_flip_tta_in_the_graph(tmp_path, sample_data):
    from click.testing import CliRunner

    from edgecnn.card import ModelCard
    from edgecnn.cli import main
    from edgecnn.runtime import Classifier
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.evaluate import tta_predict
    from edgecnn.train.loop import predict_uint8, train
    from edgecnn.train.run import load_run_model

    cfg = TrainConfig.from_dict(_recipe(tmp_path, epochs=2))
    assert cfg.augment.flip == "alternate" and cfg.lookahead.every == 5 and cfg.schedule == "triangle"
    run = train(cfg, verbose=0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tta"] == "flip+shift" and 0 <= metrics["test_accuracy_tta"] <= 1
    model = load_run_model(run, checkpoint=True)
    assert type(model.optimizer.learning_rate).__name__ != "float"  # the triangle schedule came back
    assert np.abs(model.get_layer("whiten").get_weights()[0]).max() > 1  # whitened (1/sqrt of small eigenvalues)

    r = CliRunner().invoke(main, ["export", str(run), "-q", "int8", "--tta", "flip", "--out", str(tmp_path / "tta"),
                                  "--max-accuracy-drop", "100"])
    assert r.exit_code == 0, r.output
    assert "2x the FLOPs" in r.output
    report = json.loads((tmp_path / "tta" / "export_report.json").read_text())
    assert report["parity"]["max_abs_diff"] < 1e-4 and (tmp_path / "tta" / "model.int8.onnx").is_file()
    clf = Classifier(tmp_path / "tta" / "model.onnx", provider="cpu")
    assert clf.card.export["tta"] == "flip"
    card = ModelCard.load(run)
    x = sample_data[2][:64]
    # The graph's two-view model == evaluate's flip TTA over the Keras model: one definition.
    keras_tta = tta_predict(lambda v: predict_uint8(load_run_model(run), v, card), x, "flip")
    np.testing.assert_allclose(clf.predict_proba(x), keras_tta, atol=1e-5)

    r = CliRunner().invoke(main, ["evaluate", str(run), "--tta", "flip", "--json", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[:r.output.rindex("}") + 1])["tta"] == "flip"
    assert (tmp_path / "ev" / "evaluation.tta-flip.json").is_file()


def test_export_tta_needs_a_keras_source(tmp_path):
    from edgecnn.errors import ArtifactError
    from edgecnn.export import ExportConfig, export_model
    from edgecnn.runtime import default_model_path

    with pytest.raises(ArtifactError, match="wraps a Keras model"):
        export_model(default_model_path(), out_dir=tmp_path / "x", config=ExportConfig(tta="flip"))


def test_resume_after_a_kill_continues_the_recipe_exactly(tmp_path, monkeypatch):
    """Killed after epoch 2's state: the resumed run ends where an uninterrupted one does (same data
    order and flips from (seed, epoch), the Lookahead copy rebuilt from the checkpoint, the
    schedule's step count restored)."""
    from edgecnn.train import loop
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.run import TrainState, load_run_model

    whole = loop.train(TrainConfig.from_dict(_recipe(tmp_path, out=str(tmp_path / "whole"))), verbose=0)
    real = TrainState.save

    def die_after_epoch_two(state, path):
        real(state, path)
        if path.name == "state.json" and state.epoch == 2:
            raise KeyboardInterrupt  # as a SIGKILL right after the epoch-2 commit would

    monkeypatch.setattr(TrainState, "save", die_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        loop.train(TrainConfig.from_dict(_recipe(tmp_path, out=str(tmp_path / "killed"))), verbose=0)
    monkeypatch.setattr(TrainState, "save", real)
    run = tmp_path / "killed"
    assert json.loads((run / "state.json").read_text())["epoch"] == 2
    loop.resume(run, verbose=0)
    hist = json.loads((run / "history.json").read_text())
    assert hist["epoch"] == [1, 2, 3, 4]
    a, b = load_run_model(whole, checkpoint=True), load_run_model(run, checkpoint=True)
    assert int(b.optimizer.iterations.numpy()) == int(a.optimizer.iterations.numpy()) == 4 * 6
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.asarray(wb), np.asarray(wa), rtol=1e-4, atol=1e-5, err_msg=wa.path)
    whole_hist = json.loads((whole / "history.json").read_text())
    np.testing.assert_allclose(hist["loss"], whole_hist["loss"], rtol=1e-4)
