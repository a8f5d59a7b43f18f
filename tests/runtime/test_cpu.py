"""--cpu-target auto and the runtime's warning for an int8 file made for another ISA."""

from __future__ import annotations

import logging

import pytest

from edgecnn.card import ModelCard
from edgecnn.runtime.cpu import check_int8_target, int8_target


@pytest.mark.parametrize("flags, machine, target", [
    ({"avx2", "fma"}, "x86_64", "avx2"),
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "vnni"),
    ({"avx2", "avx_vnni"}, "x86_64", "vnni"),
    ({"avx2", "amx_int8", "amx_tile"}, "x86_64", "vnni"),
    ({"asimd", "asimddp"}, "aarch64", "arm64"),
])
def test_int8_target_from_cpu_flags(flags, machine, target):
    assert int8_target(frozenset(flags), machine) == target


def _int8_card(target: str) -> ModelCard:
    return ModelCard(name="m", class_names=("a", "b"), input_size=(8, 8), precision="int8",
                     export={"quantization": {"mode": "int8", "target": target}})


def test_vnni_file_on_a_cpu_without_vnni_warns_once(caplog):
    with caplog.at_level(logging.WARNING):
        first = check_int8_target(_int8_card("vnni"), "a.int8.onnx", frozenset({"avx2"}), "x86_64")
        second = check_int8_target(_int8_card("vnni"), "a.int8.onnx", frozenset({"avx2"}), "x86_64")
    assert first and "--cpu-target avx2" in first and second is None
    assert caplog.text.count("a.int8.onnx was quantized for vnni") == 1
    assert check_int8_target(_int8_card("vnni"), "b.int8.onnx", frozenset({"avx512_vnni"}), "x86_64") is None
    assert check_int8_target(_int8_card("avx2"), "c.int8.onnx", frozenset({"avx2"}), "x86_64") is None


def test_auto_target_resolves_to_this_machine():
    pytest.importorskip("onnx")
    from edgecnn.export import QuantizeConfig

    config = QuantizeConfig.for_target("auto")
    assert config.target == int8_target() and config.reduce_range == (config.target == "avx2")
