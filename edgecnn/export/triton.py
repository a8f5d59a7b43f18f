"""Triton Inference Server model repository for the exported ONNX files (onnxruntime backend)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from edgecnn._files import atomic_path, atomic_write_text
from edgecnn.card import ModelCard
from edgecnn.errors import ConfigError

__all__ = ["write_triton_model", "triton_config"]

_TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}


def _model_name(name: str) -> str:
    """Triton model names become folder names and URL parts: keep them to [A-Za-z0-9_.-]."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")
    if not clean:
        raise ConfigError(f"Cannot make a Triton model name from {name!r}.")
    return clean


def triton_config(card: ModelCard, *, name: str, max_batch_size: int = 64, instances: int = 1,
                  max_queue_delay_us: int = 500) -> str:
    """``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``).

    Dims exclude the batch axis, which Triton adds because ``max_batch_size > 0``.
    """
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}.")
    dtype = _TRITON_TYPES.get(card.input_dtype, "TYPE_FP32")
    in_dims = ", ".join(str(d) for d in card.input_shape()[1:])
    preferred = sorted({b for b in (max(1, max_batch_size // 4), max(1, max_batch_size // 2), max_batch_size)})
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{card.input_name}"
    data_type: {dtype}
    dims: [ {in_dims} ]
  }}
]
output [
  {{
    name: "{card.output_name}"
    data_type: TYPE_FP32
    dims: [ {card.num_classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(str(b) for b in preferred)} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: {instances}
    kind: KIND_CPU
  }}
]
"""


def write_triton_model(repo: Path, onnx_path: Path, card: ModelCard, *, name: str | None = None,
                       max_batch_size: int = 64) -> Path:
    """Write ``repo/<name>/config.pbtxt``, ``labels.txt`` and ``1/model.onnx``; returns the model folder.

    Preprocessing stays outside Triton: clients normalize from the card embedded in model.onnx.
    """
    model_name = _model_name(name or card.name)
    folder = Path(repo) / model_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "1" / "model.onnx") as tmp:
        shutil.copyfile(onnx_path, tmp)
    atomic_write_text(folder / "labels.txt", "\n".join(card.class_names) + "\n")
    atomic_write_text(folder / "config.pbtxt", triton_config(card, name=model_name, max_batch_size=max_batch_size))
    return folder
