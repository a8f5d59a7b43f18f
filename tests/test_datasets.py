import numpy as np
import pytest
from PIL import Image

from edgecnn.datasets import channel_stats, load_dataset, load_npz, parse_classes
from edgecnn.errors import DataError

NAMES = ["a", "b", "c", "d"]


@pytest.mark.parametrize("spec, expected", [
    ("0-2", [0, 1, 2]), ("b,d", [1, 3]), ("3,1", [1, 3]), (["a", 2], [0, 2]), (None, None),
])
def test_parse_classes(spec, expected):
    assert parse_classes(spec, NAMES) == expected


@pytest.mark.parametrize("spec, message", [("e,a", "Unknown class 'e'"), ("0-7", "out of range"),
                                           ("a", "at least two")])
def test_parse_classes_errors(spec, message):
    with pytest.raises(DataError, match=message):
        parse_classes(spec, NAMES)


def test_embedded_sample_is_real_balanced_cifar(sample_data):
    x_tr, y_tr, x_te, y_te = sample_data
    assert x_tr.shape == (2000, 32, 32, 3) and x_te.shape == (500, 32, 32, 3) and x_tr.dtype == np.uint8
    assert np.bincount(y_tr).tolist() == [200] * 10 and np.bincount(y_te).tolist() == [50] * 10
    mean, _ = channel_stats(x_tr)
    assert 100 < mean[0] < 150  # natural images, not noise or blanks
    assert x_tr.std() > 40


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_and_subset(tmp_path, rng):
    x = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    p = _write_npz(tmp_path / "d.npz", x_train=x, y_train=y[:, None], x_test=x[:8], y_test=y[:8])
    ds = load_dataset(str(p), classes="1,3", val_split=0.25, seed=1)
    assert ds.class_names == ["1", "3"] and set(ds.y_train) <= {0, 1}
    assert len(ds.x_train) + len(ds.x_val) == 20 and len(ds.x_test) == 4
    assert ds.describe()["num_train"] == len(ds.x_train)


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 32, 32, 3), np.uint8)}, "lacks y_train, x_test, y_test"),
    ({"x_train": np.zeros((4, 32, 32), np.uint8), "y_train": np.zeros(4, int),
      "x_test": np.zeros((4, 32, 32, 3), np.uint8), "y_test": np.zeros(4, int)}, r"\(N, height, width, 3\)"),
    ({"x_train": np.zeros((4, 32, 32, 3), np.uint8), "y_train": np.zeros(3, int),
      "x_test": np.zeros((4, 32, 32, 3), np.uint8), "y_test": np.zeros(4, int)}, "4 integer labels"),
    ({"x_train": np.full((4, 32, 32, 3), 300.0), "y_train": np.zeros(4, int),
      "x_test": np.zeros((4, 32, 32, 3), np.uint8), "y_test": np.zeros(4, int)}, "0-255"),
])
def test_malformed_npz(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_npz(_write_npz(tmp_path / "bad.npz", **arrays))


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="Cannot read"):
        load_npz(tmp_path / "x.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")


def _folder(root, classes=("cat", "dog"), n=3, size=(40, 30), mode="RGB"):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            color = (i * 40) % 255 if mode == "L" else (i * 40, 10, 200)
            Image.new(mode, size, color=color).save(root / c / f"{i}.png")
    return root


def test_image_folder_with_train_and_val(tmp_path):
    _folder(tmp_path / "train", n=4)
    _folder(tmp_path / "val", n=2, mode="L")  # grayscale converts to RGB
    ds = load_dataset(str(tmp_path), input_size=(16, 16))
    assert ds.class_names == ["cat", "dog"]
    assert ds.x_train.shape == (8, 16, 16, 3) and ds.x_val.shape == (4, 16, 16, 3)
    assert ds.source.get("test_split") == "val"


@pytest.mark.parametrize("breakage, message", [
    ("empty_class", "holds no images"),
    ("corrupt", r"Cannot read .*bad.jpg"),
    ("one_class", "at least two class"),
])
def test_bad_image_folders(tmp_path, breakage, message):
    root = _folder(tmp_path / "d")
    if breakage == "empty_class":
        (root / "bird").mkdir()
    elif breakage == "corrupt":
        (root / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    else:
        import shutil

        shutil.rmtree(root / "dog")
    with pytest.raises(DataError, match=message):
        load_dataset(str(root), input_size=(16, 16))


def test_unknown_dataset_spec():
    with pytest.raises(DataError, match="not found"):
        load_dataset("/nonexistent/place")


def _npz(tmp_path, **arrays):
    rng = np.random.default_rng(0)
    data = {"x_train": rng.integers(0, 256, (20, 8, 8, 3)).astype(np.uint8), "y_train": np.arange(20) % 4,
            "x_test": rng.integers(0, 256, (8, 8, 8, 3)).astype(np.uint8), "y_test": np.arange(8) % 4}
    data.update(arrays)
    path = tmp_path / "d.npz"
    np.savez(path, **data)
    return path


def test_nan_pixels_are_refused(tmp_path):
    x = np.full((20, 8, 8, 3), 100.0, np.float32)
    x[3, 2, 2, 1] = np.nan
    with pytest.raises(DataError, match="1 pixel values are NaN or infinite"):
        load_dataset(str(_npz(tmp_path, x_train=x)), input_size=(8, 8))


def test_a_stray_test_label_does_not_add_a_class(tmp_path):
    with pytest.raises(DataError, match=r"y_test has labels \[50\] that y_train never uses \(0..3\)"):
        load_dataset(str(_npz(tmp_path, y_test=np.array([0, 1, 2, 3, 50, 1, 2, 3]))), input_size=(8, 8))


def test_a_huge_train_label_is_refused_before_anything_is_allocated(tmp_path):
    y = np.arange(20) % 4
    y[5] = 100_000
    with pytest.raises(DataError, match="labels 0..K-1 with every class present"):
        load_dataset(str(_npz(tmp_path, y_train=y)), input_size=(8, 8))


def test_limit_caps_the_validation_split_too(tmp_path):
    ds = load_dataset("sample", input_size=(32, 32), limit=50, val_split=0.2)
    assert len(ds.x_train) == 40 and len(ds.x_val) == 10


def test_a_folder_with_nothing_held_out_is_a_one_line_error(tmp_path):
    """A class-folder tree without val/ or test/, with --val-split 0: nothing to evaluate on."""
    root = _folder(tmp_path / "d", n=4)
    with pytest.raises(DataError, match="no test or validation images: hold some out with --val-split"):
        load_dataset(str(root), input_size=(16, 16), val_split=0.0)
