"""`edgecnn features`: the first convolution's filters and chosen layers' feature maps as PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.export.conftest import make_run

pytestmark = pytest.mark.tf

GAP = 2  # pixels between and around tiles, drawn white


@pytest.fixture(scope="module")
def sample3():
    from edgecnn.datasets import load_dataset

    return load_dataset("sample", classes="0-2")


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory, sample3) -> Path:
    """seed_cnn_tiny, one epoch: conv1 has 8 filters 3x3x3, its maps are 30x30."""
    return make_run(tmp_path_factory.mktemp("runs") / "seed", "seed_cnn_tiny", sample3, epochs=1)


@pytest.fixture(scope="module")
def cat(tmp_path_factory, sample3) -> Path:
    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.fromarray(sample3.x_test[0]).save(path)
    return path


def _png(path: Path) -> np.ndarray:
    img = Image.open(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def _tiles(grid: np.ndarray, n: int, side: int) -> list[np.ndarray]:
    """The ``n`` tile slots of a near-square grid of ``side``-pixel tiles, row by row."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert grid.shape[:2] == (rows * (side + GAP) + GAP, cols * (side + GAP) + GAP)
    step = side + GAP
    return [grid[GAP + r * step:GAP + r * step + side, GAP + c * step:GAP + c * step + side]
            for r in range(rows) for c in range(cols)]


def _expected_filter_tile(k: np.ndarray, scale: int) -> np.ndarray:
    """One (kh, kw, 3) filter scaled to 0-255 on its own and enlarged, computed here independently."""
    unit = (k - k.min()) / (k.max() - k.min())
    return np.round(unit * 255).astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)


def test_filter_grid_shows_each_first_layer_filter(tmp_path, seed_run, cat):
    import keras

    from edgecnn.train.features import features_files

    records = features_files(seed_run, cat, tmp_path / "out", layers=["conv1"])
    assert [(r.kind, r.layer, r.tiles, r.tile_shape, r.grid) for r in records] == [
        ("filters", "conv1", 8, (3, 3), (3, 3)), ("maps", "conv1", 8, (30, 30), (3, 3))]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat.conv1.png", "filters.conv1.png"]
    kernel = keras.models.load_model(seed_run / "model.keras").get_layer("conv1").kernel.numpy()
    grid = _png(tmp_path / "out" / "filters.conv1.png")
    tiles = _tiles(grid, 8, 33)  # 3x3 kernels enlarged 11x to reach 32 pixels
    for i in range(8):
        np.testing.assert_array_equal(tiles[i], _expected_filter_tile(kernel[..., i], 11))
    assert (tiles[8] == 255).all()  # the ninth slot of the 3x3 grid is empty
    assert sum(not (t == 255).all() for t in tiles) == 8


def test_filter_grid_follows_the_weights(tmp_path, seed_run, cat):
    import keras

    from edgecnn.train.features import features_files

    features_files(seed_run, cat, tmp_path / "before", layers=["conv1"])
    model = keras.models.load_model(seed_run / "model.keras")
    kernel = model.get_layer("conv1").kernel.numpy()
    kernel[..., 0] = 0.0
    kernel[..., 0, 0] = np.arange(9, dtype=np.float32).reshape(3, 3)  # filter 0: a ramp in red only
    changed = tmp_path / "changed.keras"
    model.get_layer("conv1").kernel.assign(kernel)
    model.save(changed)
    features_files(changed, cat, tmp_path / "after", layers=["conv1"])
    before = _tiles(_png(tmp_path / "before" / "filters.conv1.png"), 8, 33)
    after = _tiles(_png(tmp_path / "after" / "filters.conv1.png"), 8, 33)
    assert not np.array_equal(before[0], after[0])
    for i in range(1, 8):
        np.testing.assert_array_equal(before[i], after[i])
    ramp = after[0]
    assert (ramp[..., 1:] == 0).all()  # green and blue weights are the minimum
    assert ramp[0, 0, 0] == 0 and ramp[-1, -1, 0] == 255 and ramp[0, -1, 0] == round(2 / 8 * 255)


def test_feature_maps_are_the_layers_outputs_for_the_preprocessed_image(tmp_path, seed_run, cat):
    import keras

    from edgecnn.card import ModelCard
    from edgecnn.runtime.preprocess import load_image, normalize_batch
    from edgecnn.train.features import features_files, map_grid

    records = features_files(seed_run, cat, tmp_path / "out")
    # default: the first convolution and the last convolutional block
    assert [(r.kind, r.layer) for r in records] == [("filters", "conv1"), ("maps", "conv1"), ("maps", "conv3")]
    model = keras.models.load_model(seed_run / "model.keras")
    x = normalize_batch(load_image(cat, (32, 32))[None], ModelCard.load(seed_run))
    for layer, channels, side in (("conv1", 8, 30), ("conv3", 16, 4)):
        maps = np.asarray(keras.Model(model.inputs, model.get_layer(layer).output)([x]))[0]
        assert maps.shape[-1] == channels
        png = _png(tmp_path / "out" / f"cat.{layer}.png")
        np.testing.assert_array_equal(png, map_grid(maps))
        scale = math.ceil(32 / side)
        tiles = _tiles(png, channels, side * scale)
        assert sum(not (t == 255).all() for t in tiles) == channels
        live = int(np.argmax(maps.reshape(-1, channels).std(axis=0)))  # the most varied map
        r, c = np.unravel_index(np.argmax(maps[..., live]), maps.shape[:2])
        peak = tiles[live][r * scale, c * scale].astype(int)
        assert peak.tolist() == [253, 231, 37]  # viridis' top colour sits where that map peaks


def test_unknown_or_flat_layer_is_one_line_and_writes_nothing(tmp_path, seed_run, cat):
    from edgecnn.errors import ConfigError
    from edgecnn.train.features import features_files

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"No layer 'conv9' in seed_cnn\. Did you mean conv3, conv2, conv1\? "
                                          r"Convolutional layers: conv1, conv2, conv3\."):
        features_files(seed_run, cat, out, layers=["conv1", "conv9"])
    with pytest.raises(ConfigError, match=r"Layer 'features' of seed_cnn outputs \(None, 16\), not feature maps"):
        features_files(seed_run, cat, out, layers=["features"])
    assert not out.exists()


def test_onnx_models_are_refused_with_what_to_pass(tmp_path, cat):
    from edgecnn.errors import ArtifactError
    from edgecnn.runtime import default_model_path
    from edgecnn.train.features import features_files

    onnx = default_model_path()
    export_dir = tmp_path / "run" / "export"
    export_dir.mkdir(parents=True)
    (export_dir / "model.onnx").write_bytes(onnx.read_bytes())
    for source in (onnx, export_dir):
        with pytest.raises(ArtifactError, match="is an ONNX export; .* pass the run directory it came from or its "
                                                "model.keras"):
            features_files(source, cat, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_image_is_one_line_and_writes_nothing(tmp_path, seed_run):
    from edgecnn.errors import InputError
    from edgecnn.train.features import features_files

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(InputError, match="broken.png"):
        features_files(seed_run, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_files_and_errors_in_one_line(tmp_path, seed_run, cat):
    from edgecnn.cli import main

    r = CliRunner().invoke(main, ["features", str(seed_run), str(cat), "--out", str(tmp_path / "f"),
                                  "--layer", "conv2", "--layer", "pool2"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        f"wrote {tmp_path / 'f' / 'filters.conv1.png'}: 8 filters of conv1 (3x3, 3x3 grid)",
        f"wrote {tmp_path / 'f' / 'cat.conv2.png'}: 16 feature maps of conv2 (13x13, 4x4 grid)",
        f"wrote {tmp_path / 'f' / 'cat.pool2.png'}: 16 feature maps of pool2 (6x6, 4x4 grid)"]
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["cat.conv2.png", "cat.pool2.png", "filters.conv1.png"]
    r = CliRunner().invoke(main, ["features", str(seed_run), str(cat), "--out", str(tmp_path / "g"), "--layer", "conv"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert "No layer 'conv'" in r.output and not (tmp_path / "g").exists()


def test_plain_keras_models_gray_and_sequential(tmp_path, cat):
    """A user's Sequential model (no card, no zoo names) and a 1-channel one: gray filter tiles."""
    import keras

    from edgecnn.presets import ModelOverrides
    from edgecnn.train.features import features_files

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(5, 4, name="c1"), keras.layers.ReLU(),
                              keras.layers.Conv2D(6, 3, name="c2"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")], name="mine")
    model.save(tmp_path / "mine.keras")
    records = features_files(tmp_path / "mine.keras", cat, tmp_path / "out",
                             overrides=ModelOverrides(preprocess="unit"))
    assert [(r.kind, r.layer, r.tiles, r.tile_shape) for r in records] == [
        ("filters", "c1", 5, (4, 4)), ("maps", "c1", 5, (29, 29)), ("maps", "c2", 6, (27, 27))]
    tiles = _tiles(_png(tmp_path / "out" / "filters.c1.png"), 5, 32)
    for tile, k in zip(tiles, model.get_layer("c1").kernel.numpy().transpose(3, 0, 1, 2)):
        assert (tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all()  # gray
        np.testing.assert_array_equal(tile[..., 0], _expected_filter_tile(k[..., 0], 8))


@pytest.mark.slow
def test_transfer_model_backbone_layers_by_path(tmp_path, sample3, cat):
    """A keras.applications backbone nested in a transfer model: its layers are named backbone/NAME."""
    from edgecnn.errors import ConfigError
    from edgecnn.train.features import features_files
    from edgecnn.train.transfer import build_transfer_model

    model, pre = build_transfer_model("mobilenet_v2", 3, input_size=(32, 32), weights="none", backbone_input_size=64)
    run = make_run(tmp_path / "transfer", "transfer:mobilenet_v2", sample3, epochs=0, model=model,
                   mean=pre.mean, std=pre.std)
    records = features_files(run, cat, tmp_path / "out")
    assert [(r.kind, r.layer, r.tiles, r.tile_shape) for r in records] == [
        ("filters", "backbone/Conv1", 32, (3, 3)), ("maps", "backbone/Conv1", 32, (32, 32)),
        ("maps", "backbone", 64, (2, 2))]  # the 64 most active of 1280 (all 1280 drawn before)
    assert records[2].of == 1280
    assert (tmp_path / "out" / "cat.backbone-Conv1.png").is_file()
    records = features_files(run, cat, tmp_path / "out2", layers=["backbone/block_1_expand_relu"], max_maps=96)
    assert records[1].tiles == 96 and records[1].tile_shape == (32, 32) and records[1].of is None
    with pytest.raises(ConfigError, match="Did you mean backbone/Conv1"):
        features_files(run, cat, tmp_path / "out3", layers=["backbone/conv1"])


def test_map_grid_scales_each_map_and_draws_dead_ones_dark():
    from edgecnn.train.features import map_grid

    maps = np.zeros((4, 4, 3), np.float32)
    maps[..., 1] = np.arange(16).reshape(4, 4) * 1e-6  # tiny values still span the colormap
    maps[..., 2] = 7.0  # constant
    tiles = _tiles(map_grid(maps), 3, 32)
    low, high = [68, 1, 84], [253, 231, 37]  # viridis at 0 and at 1
    assert (tiles[0] == low).all() and (tiles[2] == low).all() and (tiles[3] == 255).all()
    assert tiles[1][0, 0].tolist() == low and tiles[1][-1, -1].tolist() == high


def test_the_readme_line_runs_as_written(tmp_path, seed_run, cat, monkeypatch):
    import re
    import shlex
    import shutil

    from edgecnn.cli import main

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (line,) = re.findall(r"^edgecnn features runs/seed cat\.png[^#\n]*", readme, flags=re.M)
    shutil.copytree(seed_run, tmp_path / "runs" / "seed")
    shutil.copy(cat, tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, shlex.split(line)[1:])
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) == 3 and (tmp_path / "features" / "filters.conv1.png").is_file()


def test_a_wide_layer_draws_its_most_active_maps(tmp_path, seed_run, cat):
    """Issue 21 §3: a 1,280-channel layer drew all of them; --max-maps caps it (the most active)."""
    import keras

    from edgecnn.card import ModelCard
    from edgecnn.runtime.preprocess import load_image, normalize_batch
    from edgecnn.train.features import features_files, map_grid

    records = features_files(seed_run, cat, tmp_path / "out", layers=["conv3"], max_maps=5)
    maps_record = records[-1]
    assert (maps_record.tiles, maps_record.of) == (5, 16) and "the 5 most active of 16" in maps_record.describe()
    model = keras.models.load_model(seed_run / "model.keras")
    x = normalize_batch(load_image(cat, (32, 32))[None], ModelCard.load(seed_run))
    maps = np.asarray(keras.Model(model.inputs, model.get_layer("conv3").output)([x]))[0]
    keep = np.sort(np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:5])
    np.testing.assert_array_equal(_png(tmp_path / "out" / "cat.conv3.png"), map_grid(maps[..., keep]))
