"""Shared fixtures; tests needing an optional dependency skip when it is missing."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_NEEDS = {"tf": ("tensorflow", "keras"), "export": ("tf2onnx", "onnx")}


def pytest_collection_modifyitems(config, items):
    missing = {mark: [m for m in mods if importlib.util.find_spec(m) is None] for mark, mods in _NEEDS.items()}
    for item in items:
        for mark, mods in missing.items():
            if mods and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(mods)} (pip install 'edgecnn[all]')"))
        if "gpu" in item.keywords:
            try:
                import onnxruntime as ort

                has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
            except ImportError:
                has_cuda = False
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs onnxruntime-gpu with a CUDA device"))


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def sample_data():
    """The embedded CIFAR-10 sample as (x_train, y_train, x_test, y_test) uint8 arrays."""
    from edgecnn.datasets import load_embedded_sample

    return load_embedded_sample()
