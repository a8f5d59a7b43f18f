"""The Triton model repository, parsed with Triton's own ModelConfig protobuf schema."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.tf, pytest.mark.export]


def _parse(path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()), model_config_pb2


def test_triton_repository_parses_with_model_config_schema(seed_export):
    report, out = seed_export
    repo = out.parent / "triton"
    assert sorted(p.name for p in repo.iterdir()) == ["seed_tiny", "seed_tiny_fp16", "seed_tiny_int8",
                                                      "seed_tiny_int8_dynamic"]
    cfg, pb = _parse(repo / "seed_tiny" / "config.pbtxt")
    assert cfg.name == "seed_tiny" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 64
    (inp,), (outp,) = cfg.input, cfg.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", pb.TYPE_FP32, [32, 32, 3])
    assert (outp.name, outp.data_type, list(outp.dims)) == ("probabilities", pb.TYPE_FP32, [3])
    assert cfg.HasField("dynamic_batching") and max(cfg.dynamic_batching.preferred_batch_size) <= cfg.max_batch_size
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert (repo / "seed_tiny" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert (repo / "seed_tiny" / "labels.txt").read_text().split() == ["airplane", "automobile", "bird"]
    cfg8, _ = _parse(repo / "seed_tiny_int8" / "config.pbtxt")
    assert cfg8.name == "seed_tiny_int8"


def test_nchw_triton_dims():
    from edgecnn.card import ModelCard
    from edgecnn.export import triton_config

    card = ModelCard(name="m", architecture="x", class_names=["a", "b"], input_size=(24, 16), layout="nchw")
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    import tritonclient.grpc.model_config_pb2 as pb
    from google.protobuf import text_format

    cfg = text_format.Parse(triton_config(card, name="m", max_batch_size=8), pb.ModelConfig())
    assert list(cfg.input[0].dims) == [3, 24, 16] and list(cfg.dynamic_batching.preferred_batch_size) == [2, 4, 8]
