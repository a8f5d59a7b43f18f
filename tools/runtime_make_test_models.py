"""Write the tiny ONNX classifiers of tests/runtime/data (run after changing them; needs onnx).

    .venv/bin/python tools/runtime_make_test_models.py

Each is ReduceMean over the image -> MatMul(3x4) + bias -> Softmax (or logits): small enough to
commit, simple enough to recompute in numpy, so a base install (no onnx, no TensorFlow) can run
every runtime test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgecnn.card import ONNX_METADATA_KEY, ModelCard  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "runtime" / "data"
W = np.array([[0.02, -0.01, 0.00, 0.01], [-0.02, 0.03, 0.01, 0.00], [0.01, 0.00, -0.03, 0.02]], np.float32) * 40
B = np.array([0.1, -0.2, 0.05, 0.0], np.float32)
LABELS = ["cat", "dog", "bird", "fish"]


def card(layout: str, output_kind: str) -> ModelCard:
    return ModelCard(name="tiny", architecture="tiny_mean_linear", class_names=LABELS, input_size=(8, 8),
                     mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0), layout=layout,
                     output_name="probabilities" if output_kind == "probabilities" else "logits",
                     output_kind=output_kind, dataset={"name": "synthetic"})


def build(layout: str, output_kind: str, with_card: bool) -> onnx.ModelProto:
    shape = ["batch", 8, 8, 3] if layout == "nhwc" else ["batch", 3, 8, 8]
    axes = [1, 2] if layout == "nhwc" else [2, 3]
    out = "probabilities" if output_kind == "probabilities" else "logits"
    nodes = [helper.make_node("ReduceMean", ["images"], ["pooled"], axes=axes, keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "B"], ["logits" if out == "probabilities" else out])]
    if out == "probabilities":
        nodes.append(helper.make_node("Softmax", ["logits"], [out], axis=1))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgecnn-tests")
    model.ir_version = 8
    if with_card:
        helper.set_model_props(model, {ONNX_METADATA_KEY: card(layout, output_kind).to_json()})
    onnx.checker.check_model(model)
    return model


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, args in {"tiny_nhwc.onnx": ("nhwc", "probabilities", True),
                       "tiny_nchw_logits.onnx": ("nchw", "logits", True),
                       "tiny_nocard.onnx": ("nhwc", "probabilities", False)}.items():
        onnx.save(build(*args), OUT / name)
    (OUT / "tiny_weights.json").write_text(json.dumps({"W": W.tolist(), "B": B.tolist(), "labels": LABELS}))
    print(f"wrote {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    main()
