"""Tiny committed ONNX classifiers (tools/runtime_make_test_models.py) and test images."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def models(tmp_path) -> dict[str, Path]:
    """Copies of the tiny models in tmp_path (tests may damage them)."""
    out = {}
    for p in DATA.glob("*.onnx"):
        out[p.stem.removeprefix("tiny_")] = Path(shutil.copy(p, tmp_path / p.name))
    return out


@pytest.fixture(scope="session")
def weights() -> dict:
    w = json.loads((DATA / "tiny_weights.json").read_text())
    return {"W": np.asarray(w["W"], np.float32), "B": np.asarray(w["B"], np.float32), "labels": w["labels"]}


def reference_logits(pixels: np.ndarray, weights: dict) -> np.ndarray:
    """numpy recomputation of the tiny model on uint8 NHWC pixels (card mean/std of the tiny card)."""
    x = (pixels.astype(np.float64) - [120.0, 110.0, 100.0]) / [60.0, 50.0, 40.0]
    return x.mean(axis=(1, 2)) @ weights["W"].astype(np.float64) + weights["B"]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="session")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
