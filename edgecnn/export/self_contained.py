"""Self-contained ONNX files: uint8 pixels in, the task's answers out, in standard ONNX ops only.

An exported ``.onnx`` is half of a deployment: an app must also redo the card's preprocessing
(channel order, mean/std, layout) and the head's post-processing (softmax and top-k, YOLO decoding
and NMS, the mask's argmax). :func:`make_self_contained` puts both into the graph, so any
onnxruntime binding (C++, Java, Node.js, the browser's WebAssembly build) gives edgecnn's answers
from an RGB image at the card's input size:

- input ``pixels``: uint8 ``[N, H, W, C]`` (RGB, or gray for a 1-channel model), the mapping the
  runtime folds for its own calls (:func:`edgecnn.runtime.pixels.fold_onnx`: Gather for BGR,
  Transpose, Cast, Sub, Mul) in front of the model;
- classify: ``probabilities`` ``[N, C]`` (softmax of a logits model), ``top_scores`` and
  ``top_classes`` ``[N, K]`` (``TopK``, best first);
- detect: ``detections`` ``[1, max_det, 6]``: ``x1, y1, x2, y2`` (model-input pixels), score,
  class; the YOLO output decoded, each anchor's best class, ``NonMaxSuppression`` per class (the
  thresholds and the cap baked in and written in the card), best first, then zero rows (score 0)
  up to ``max_det``, as Ultralytics' ``end2end`` layout; one image per call (NMS's selected
  indices are not per image). A detector with NMS already in its graph keeps it: an ``end2end``
  one its outputs, a ``boxes-xyxy``/``boxes-yxyx`` one (separate boxes, scores, classes, count)
  gets the same ``[N, K, 6]`` rows (x-first, in input pixels, rows past the count zeroed).
- segment: ``class_map`` int64 ``[N, h, w]``: the argmax over classes (a 1-channel model's score
  thresholded), at the output's resolution.

The card stays in ``metadata_props`` with ``self_contained: true``, uint8 NHWC RGB input, mean 0,
std 1, and the output the runtime's heads read (``probabilities``, ``end2end``, ``class-map``), so
``edgecnn predict`` and ``serve`` run such a file with their own pre/post-processing reduced to
the image fit; the folded mapping and the baked thresholds are in ``card.export["self_contained"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.export import onnx as onnx_io
from edgecnn.nms_layouts import BOX_KINDS, NMS_KINDS
from edgecnn.runtime.pixels import FreshNames, fold_onnx

__all__ = ["SelfContainedSettings", "make_self_contained", "why_not", "self_contained_name", "CLASSIFY_OUTPUTS",
           "DETECT_OUTPUT", "SEGMENT_OUTPUT", "PIXELS"]

PIXELS = "pixels"
CLASSIFY_OUTPUTS = ("probabilities", "top_scores", "top_classes")
DETECT_OUTPUT = "detections"
SEGMENT_OUTPUT = "class_map"
_MIN_OPSET = 13  # Squeeze/Unsqueeze axes as inputs, Softmax over one axis


@dataclass(frozen=True, kw_only=True)
class SelfContainedSettings:
    """What a self-contained file bakes in: classify's ``top_k``; detect's score threshold
    (``conf``: boxes scoring above it), NMS ``iou`` and ``max_det`` (the runtime's defaults).

    Raises:
        ConfigError: for a value out of range.
    """

    top_k: int = 5
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_det < 1 or not 0 <= self.conf <= 1 or not 0 <= self.iou <= 1:
            raise ConfigError(f"self-contained settings: top_k and max_det must be >= 1, conf and iou in 0-1; got "
                              f"top_k={self.top_k}, max_det={self.max_det}, conf={self.conf}, iou={self.iou}.")


def make_self_contained(proto: Any, card: ModelCard, *,
                        settings: SelfContainedSettings | None = None) -> tuple[Any, ModelCard]:
    """The model as a self-contained file (its card embedded) and that card.

    Args:
        proto: the exported ``onnx.ModelProto`` (any variant: fp32, int8 QDQ, fp16), not changed.
        card: its card.
        settings: the baked thresholds (defaults: the runtime's).

    Raises:
        ArtifactError: for a model whose task or output cannot be put in the graph (a raw model, a
            yolox detector, a detector fixed to batches of more than one image), or a file the
            pixel mapping cannot be folded into (external weights, a non-float 4-D input).
    """
    import onnx

    settings = settings or SelfContainedSettings()
    refused = why_not(card)
    if refused:
        raise ArtifactError(refused)
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if (onnx_io.opset_of(model) or 0) < _MIN_OPSET:
        model = onnx_io.convert_opset(model, _MIN_OPSET, why="a self-contained file's post-processing")
    keeps_outputs = card.task == "detect" and card.output_kind == "end2end"  # already [N, K, 6] rows
    original = [o.name for o in model.graph.output]
    if not keeps_outputs:  # free the public names; the raw outputs become internal tensors
        onnx_io.rename_io(model, outputs=[f"edgecnn_raw_{i}" for i in range(len(original))])
    folded = fold_onnx(model.SerializeToString(), card, card.input_name)
    if folded is None:
        raise ArtifactError(f"{card.name}: the pixel mapping cannot be folded into this file (external weight files, "
                            "or an input that is not a float NCHW/NHWC image).")
    model = onnx.load_from_string(folded)
    pixels = model.graph.input[[i.name for i in model.graph.input].index(_pixel_input(model, card))]
    if card.task == "detect" and card.output_kind not in NMS_KINDS:  # our NMS: one image per call
        _one_image(pixels, card)
    pixels.name = _rename_tensor(model, pixels.name, PIXELS)
    if keeps_outputs:
        outputs, kind, name = original, card.output_kind, card.output_name
        extra: dict[str, Any] = {}
    else:
        raws = list(model.graph.output)
        del model.graph.output[:]
        if card.output_kind in BOX_KINDS:
            outputs, kind, extra = _box_rows(_Graph(model), raws, original, card)
        else:
            primary = original.index(card.output_name) if card.output_name in original else 0
            outputs, kind, extra = _POST[card.task](_Graph(model), raws[primary], card, settings)
        name = outputs[0]
    new = _self_contained_card(card, outputs=outputs, kind=kind, output_name=name, extra=extra)
    onnx_io.embed_card(model, new)
    _sort_nodes(model.graph)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        why = " ".join(str(err).split())[:300]
        raise ArtifactError(f"{card.name}: the self-contained graph is not valid ONNX ({why}); please report it, and "
                            "drop --self-contained meanwhile.") from err
    return model, new


def _sort_nodes(graph: Any) -> None:
    """Order the nodes so each comes after the producers of its inputs, as the ONNX checker wants
    (onnxconverter-common's fp16 conversion appends its input Cast at the end, which onnxruntime
    accepts, the checker and other runtimes do not)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # a cycle or a tensor nobody makes: leave the rest as it was, the checker will say
            ordered += pending
            break
        for n in ready:
            known.update(n.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def why_not(card: ModelCard) -> str | None:
    """One line saying why a model of this card cannot become self-contained (None: it can)."""
    if card.self_contained:
        return f"{card.name} is already self-contained."
    if card.task == "raw":
        return (f"{card.name} is a raw model: there is no task whose answers could go into the file; pass "
                "--task classify|detect|segment, or drop --self-contained.")
    if card.task == "detect" and card.output_kind == "yolox":
        return (f"{card.name}: a yolox detector's grid decoding is not put into self-contained files; drop "
                "--self-contained (the runtime decodes it).")
    return None


def self_contained_name(file: str) -> str:
    """The self-contained file's name beside a variant's: ``model.int8.onnx`` -> ``model.int8.self-contained.onnx``."""
    return file.removesuffix(".onnx") + ".self-contained.onnx"


def _pixel_input(model: Any, card: ModelCard) -> str:
    """The folded graph's uint8 input (the one that replaced ``card.input_name``)."""
    return next(i.name for i in model.graph.input if i.type.tensor_type.elem_type == 2)  # TensorProto.UINT8


def _one_image(pixels: Any, card: ModelCard) -> None:
    """A detector's pixel input fixed to one image per call (NMS's selected rows are not per image).

    Raises:
        ArtifactError: for a detector fixed to a batch of more than one.
    """
    dim = pixels.type.tensor_type.shape.dim[0]
    if dim.HasField("dim_value") and dim.dim_value > 1:
        raise ArtifactError(f"{card.name} takes batches of {dim.dim_value} images; a self-contained detector runs one "
                            "image per call: export the detector with a dynamic or single-image batch.")
    dim.Clear()
    dim.dim_value = 1


def _rename_tensor(model: Any, old: str, new: str) -> str:
    """Rename a graph input everywhere it is used; returns the name it got."""
    if old != new:
        onnx_io.rename_io(model, inputs=[new if i.name == old else i.name for i in model.graph.input])
    return new


def _self_contained_card(card: ModelCard, *, outputs: list[str], kind: str, output_name: str,
                         extra: dict[str, Any]) -> ModelCard:
    folded = {"preprocessing": card.describe_preprocessing(), "input_name": card.input_name,
              "output_name": card.output_name, "output_kind": card.output_kind}
    return card.replace(input_name=PIXELS, input_dtype="uint8", layout="nhwc", channel_order="RGB",
                        mean=(0.0,) * card.channels, std=(1.0,) * card.channels, output_name=output_name,
                        output_kind=kind, self_contained=True,
                        export={**card.export, "self_contained": {"outputs": outputs, "folded": folded, **extra}})


# ------------------------------------------------------------------------------ graph building


class _Graph:
    """Appends nodes and constants to a model's graph with names not yet taken."""

    def __init__(self, model: Any) -> None:
        self.graph = g = model.graph
        self.fresh = FreshNames({n for node in g.node for n in (*node.input, *node.output)} | {i.name for i in g.input}
                                | {t.name for t in g.initializer} | {o.name for o in g.output})

    def node(self, op: str, inputs: list[str], base: str, outputs: int = 1, **attrs: Any) -> Any:
        """One node; its output name (or names, for ``outputs`` > 1)."""
        from onnx import helper

        names = [self.fresh(f"{base}_{i}" if outputs > 1 else base) for i in range(outputs)]
        self.graph.node.append(helper.make_node(op, inputs, names, **attrs))
        return names if outputs > 1 else names[0]

    def const(self, values: Any, base: str, dtype: Any) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def output(self, tensor: str, name: str, elem: int, shape: list[Any]) -> str:
        """Expose ``tensor`` as graph output ``name`` (an Identity when the names differ)."""
        from onnx import helper

        if tensor != name:
            self.fresh.taken.add(name)
            self.graph.node.append(helper.make_node("Identity", [tensor], [name]))
        self.graph.output.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def as_float(self, raw: Any) -> str:
        """The raw output as float32 (an fp16 model's cast up first)."""
        from onnx import TensorProto

        if raw.type.tensor_type.elem_type == TensorProto.FLOAT:
            return str(raw.name)
        return self.node("Cast", [raw.name], "edgecnn_float_out", to=TensorProto.FLOAT)


def _dims(raw: Any) -> list[Any]:
    """An output's dims: ints where known, the symbol (or None) where not."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in raw.type.tensor_type.shape.dim]


def _classify(g: _Graph, raw: Any, card: ModelCard, settings: SelfContainedSettings
              ) -> tuple[list[str], str, dict[str, Any]]:
    from onnx import TensorProto

    dims = _dims(raw)
    classes = card.num_classes or (dims[1] if len(dims) == 2 and isinstance(dims[1], int) else 0)
    if len(dims) != 2 or classes < 1:
        raise ArtifactError(f"{card.name}: a classifier's output {dims} is not [N, classes]; self-contained "
                            "classifiers need one score per class.")
    x = g.as_float(raw)
    if card.output_kind == "logits":
        x = g.node("Softmax", [x], "edgecnn_softmax", axis=-1)
    k = min(settings.top_k, classes)
    probs = g.output(x, CLASSIFY_OUTPUTS[0], TensorProto.FLOAT, [dims[0], classes])
    scores, indices = g.node("TopK", [probs, g.const([k], "edgecnn_k", np.int64)], "edgecnn_topk", outputs=2,
                             axis=-1, largest=1, sorted=1)
    g.output(scores, CLASSIFY_OUTPUTS[1], TensorProto.FLOAT, [dims[0], k])
    g.output(indices, CLASSIFY_OUTPUTS[2], TensorProto.INT64, [dims[0], k])
    return list(CLASSIFY_OUTPUTS), "probabilities", {"top_k": k}


def _segment(g: _Graph, raw: Any, card: ModelCard, settings: SelfContainedSettings
             ) -> tuple[list[str], str, dict[str, Any]]:
    from onnx import TensorProto

    from edgecnn.runtime.heads.segment import class_axis

    del settings
    dims = _dims(raw)
    shape = [d if isinstance(d, int) else -1 for d in dims]
    axis = class_axis(shape, card.num_classes, card.layout)
    if axis is None:  # class indices already
        out = g.node("Cast", [raw.name], "edgecnn_classes", to=TensorProto.INT64)
        spatial = dims
    elif shape[axis] == 1:  # one foreground score: class 1 above 0 (logits) or 0.5 (probabilities)
        threshold = 0.0 if card.output_kind == "logits" else 0.5
        above = g.node("Greater", [g.as_float(raw), g.const(threshold, "edgecnn_fg", np.float32)], "edgecnn_fg")
        squeezed = g.node("Squeeze", [above, g.const([axis], "edgecnn_class_axis", np.int64)], "edgecnn_fg_map")
        out = g.node("Cast", [squeezed], "edgecnn_classes", to=TensorProto.INT64)
        spatial = [d for i, d in enumerate(dims) if i != axis]
    else:
        out = g.node("ArgMax", [raw.name], "edgecnn_argmax", axis=axis, keepdims=0)
        spatial = [d for i, d in enumerate(dims) if i != axis]
    g.output(out, SEGMENT_OUTPUT, TensorProto.INT64, spatial)
    return [SEGMENT_OUTPUT], "class-map", {}


def _detect(g: _Graph, raw: Any, card: ModelCard, settings: SelfContainedSettings
            ) -> tuple[list[str], str, dict[str, Any]]:
    """YOLO output -> ``[1, K, 6]`` rows, as :func:`edgecnn.runtime.heads.detect.postprocess_yolo`
    computes them: xywh -> xyxy, normalized boxes scaled to the input, each anchor's best class,
    class-aware NMS (ONNX's is per class), best first, at most ``max_det``."""
    from onnx import TensorProto

    from edgecnn.runtime.heads.detect import output_layout

    dims = _dims(raw)
    if len(dims) != 3:
        raise ArtifactError(f"{card.name}: a {card.output_kind} detector output is 3-D; got {dims}.")
    layout = output_layout(card.output_kind, dims, card.num_classes)  # the shape decides, as the Detector's
    if layout != card.output_kind:
        card = card.replace(output_kind=layout)
    boxes, scores = _decode_yolo(g, g.as_float(raw), card)
    best_class = g.node("ArgMax", [scores], "edgecnn_best_class", axis=2, keepdims=1)  # [1, A, 1]
    best = g.node("GatherElements", [scores, best_class], "edgecnn_best", axis=2)  # [1, A, 1]
    classes = g.const(np.arange(card.num_classes or _count(dims, card)), "edgecnn_class_ids", np.int64)
    only_best = g.node("Cast", [g.node("Equal", [best_class, classes], "edgecnn_is_best")], "edgecnn_best_mask",
                       to=TensorProto.FLOAT)
    per_class = g.node("Transpose", [g.node("Mul", [scores, only_best], "edgecnn_best_scores")],
                       "edgecnn_nms_scores", perm=[0, 2, 1])  # [1, C, A]: each anchor scores for its best class only
    table = _nms_rows(g, boxes, best, per_class, settings)
    g.output(g.node("Unsqueeze", [table, g.const([0], "edgecnn_zero", np.int64)], "edgecnn_detections"),
             DETECT_OUTPUT, TensorProto.FLOAT, [1, settings.max_det, 6])
    return [DETECT_OUTPUT], "end2end", {"conf": settings.conf, "iou": settings.iou, "max_det": settings.max_det}


def _decode_yolo(g: _Graph, out: str, card: ModelCard) -> tuple[str, str]:
    """``[1, A, 4]`` x1, y1, x2, y2 boxes in input pixels and ``[1, A, C]`` class scores, as
    :func:`edgecnn.runtime.heads.detect.decode_yolo` and the normalized-box rule compute them."""
    i64 = np.int64

    def cut(x: str, start: int, end: int) -> str:
        return g.node("Slice", [x, g.const([start], "edgecnn_start", i64), g.const([end], "edgecnn_end", i64),
                                g.const([2], "edgecnn_axis", i64)], "edgecnn_slice")

    big = int(np.iinfo(np.int64).max)
    if card.output_kind == "yolov8":  # [1, 4 + C, A] -> [1, A, 4 + C]
        rows = g.node("Transpose", [out], "edgecnn_rows", perm=[0, 2, 1])
        xywh, scores = cut(rows, 0, 4), cut(rows, 4, big)
    else:  # yolov5: [1, A, 5 + C], class score x objectness
        xywh = cut(out, 0, 4)
        scores = g.node("Mul", [cut(out, 5, big), cut(out, 4, 5)], "edgecnn_scores")
    half = g.node("Div", [cut(xywh, 2, 4), g.const(2.0, "edgecnn_two", np.float32)], "edgecnn_half")
    centre = cut(xywh, 0, 2)
    corners = [g.node("Sub", [centre, half], "edgecnn_x1y1"), g.node("Add", [centre, half], "edgecnn_x2y2")]
    boxes = g.node("Concat", corners, "edgecnn_boxes", axis=2)
    h, w = card.input_size
    largest = g.node("ReduceMax", [g.node("Abs", [boxes], "edgecnn_abs")], "edgecnn_largest", keepdims=0)
    normalized = g.node("LessOrEqual", [largest, g.const(1.5, "edgecnn_norm_limit", np.float32)], "edgecnn_normalized")
    scaled = g.node("Mul", [boxes, g.const([w, h, w, h], "edgecnn_wh", np.float32)], "edgecnn_scaled")
    return g.node("Where", [normalized, scaled, boxes], "edgecnn_boxes_px"), scores


def _nms_rows(g: _Graph, boxes: str, best: str, per_class: str, settings: SelfContainedSettings) -> str:
    """``NonMaxSuppression`` per class, then the kept rows ``[K, 6]`` best first, at most ``max_det``."""
    from onnx import TensorProto

    i64 = np.int64
    chosen = g.node("NonMaxSuppression", [boxes, per_class, g.const([settings.max_det], "edgecnn_max_det", i64),
                                          g.const([settings.iou], "edgecnn_iou", np.float32),
                                          g.const([settings.conf], "edgecnn_conf", np.float32)], "edgecnn_nms")
    anchor = g.node("Gather", [chosen, g.const(2, "edgecnn_box_col", i64)], "edgecnn_anchor", axis=1)  # [M]
    flat_boxes = g.node("Squeeze", [boxes, g.const([0], "edgecnn_batch_axis", i64)], "edgecnn_boxes_a")
    kept_boxes = g.node("Gather", [flat_boxes, anchor], "edgecnn_kept_boxes", axis=0)
    flat_best = g.node("Squeeze", [best, g.const([0, 2], "edgecnn_best_axes", i64)], "edgecnn_best_a")
    kept_scores = g.node("Gather", [flat_best, anchor], "edgecnn_kept_scores", axis=0)
    kept_ids = g.node("Gather", [chosen, g.const(1, "edgecnn_class_col", i64)], "edgecnn_kept_cls", axis=1)
    kept_classes = g.node("Cast", [kept_ids], "edgecnn_kept_classes", to=TensorProto.FLOAT)
    found = g.node("Shape", [kept_scores], "edgecnn_found")
    count = g.node("Min", [found, g.const([settings.max_det], "edgecnn_cap", i64)], "edgecnn_count")
    top, order = g.node("TopK", [kept_scores, count], "edgecnn_order", outputs=2, axis=0, largest=1, sorted=1)
    one = g.const([1], "edgecnn_one", i64)
    columns = [g.node("Gather", [kept_boxes, order], "edgecnn_rows_boxes", axis=0),
               g.node("Unsqueeze", [top, one], "edgecnn_rows_scores"),
               g.node("Unsqueeze", [g.node("Gather", [kept_classes, order], "edgecnn_rows_cls", axis=0), one],
                      "edgecnn_rows_classes")]
    table = g.node("Concat", columns, "edgecnn_table", axis=1)
    # zero rows up to max_det (Ultralytics' end2end layout): a fixed shape, as every binding likes it
    missing = g.node("Sub", [g.const([settings.max_det], "edgecnn_rows", i64), count], "edgecnn_missing")
    pads = g.node("Concat", [g.const([0, 0], "edgecnn_pad_start", i64), missing, g.const([0], "edgecnn_pad_end", i64)],
                  "edgecnn_pads", axis=0)
    return str(g.node("Pad", [table, pads], "edgecnn_padded"))


def _box_rows(g: _Graph, raws: list[Any], names: list[str], card: ModelCard) -> tuple[list[str], str, dict[str, Any]]:
    """A detector whose graph already suppresses, with boxes, scores, classes (and a count) apart
    (``boxes-xyxy``/``boxes-yxyx``) -> the same ``[N, K, 6]`` rows as the others: boxes x-first in
    input pixels, rows past the count or of a negative class zeroed, as
    :func:`edgecnn.runtime.heads.graph_nms.postprocess_graph_nms` reads them."""
    from onnx import TensorProto

    from edgecnn.runtime.heads.graph_nms import graph_nms_outputs

    roles = graph_nms_outputs(card.output_kind, names, [_dims(r) for r in raws], card.name)
    assert roles.scores is not None and roles.classes is not None
    i64, f32 = np.int64, np.float32

    def as_float(index: int) -> str:
        return g.node("Cast", [raws[index].name], "edgecnn_float_out", to=TensorProto.FLOAT)

    boxes = as_float(roles.boxes)
    if card.output_kind == "boxes-yxyx":
        boxes = g.node("Gather", [boxes, g.const([1, 0, 3, 2], "edgecnn_xfirst", i64)], "edgecnn_boxes_x", axis=2)
    h, w = card.input_size
    largest = g.node("ReduceMax", [g.node("Abs", [boxes], "edgecnn_abs")], "edgecnn_largest", keepdims=0)
    normalized = g.node("LessOrEqual", [largest, g.const(1.5, "edgecnn_norm_limit", f32)], "edgecnn_normalized")
    scaled = g.node("Mul", [boxes, g.const([w, h, w, h], "edgecnn_wh", f32)], "edgecnn_scaled")
    boxes = g.node("Where", [normalized, scaled, boxes], "edgecnn_boxes_px")
    scores, classes = as_float(roles.scores), as_float(roles.classes)
    keep = g.node("GreaterOrEqual", [classes, g.const(0.0, "edgecnn_zero_f", f32)], "edgecnn_known_class")
    if roles.count is not None:  # rows past the count are not detections
        rank = g.node("Range", [g.const(0, "edgecnn_r0", i64), g.node(
            "Gather", [g.node("Shape", [scores], "edgecnn_rows_shape"), g.const(1, "edgecnn_k_axis", i64)],
            "edgecnn_rows_k", axis=0), g.const(1, "edgecnn_r1", i64)], "edgecnn_rank")
        count = g.node("Cast", [g.node("Reshape", [raws[roles.count].name, g.const([-1, 1], "edgecnn_col", i64)],
                                       "edgecnn_count_col")], "edgecnn_count_i", to=TensorProto.INT64)
        keep = g.node("And", [keep, g.node("Less", [rank, count], "edgecnn_counted")], "edgecnn_keep")
    mask = g.node("Cast", [keep], "edgecnn_keep_f", to=TensorProto.FLOAT)
    axis2 = g.const([2], "edgecnn_axis2", i64)
    rows = g.node("Concat", [boxes, g.node("Unsqueeze", [scores, axis2], "edgecnn_score_col"),
                             g.node("Unsqueeze", [classes, axis2], "edgecnn_class_col")], "edgecnn_rows6", axis=2)
    table = g.node("Mul", [rows, g.node("Unsqueeze", [mask, axis2], "edgecnn_mask_col")], "edgecnn_rows_kept")
    batch = _dims(raws[roles.scores])
    g.output(table, DETECT_OUTPUT, TensorProto.FLOAT, [batch[0], batch[1], 6])
    return [DETECT_OUTPUT], "end2end", {}


def _count(dims: list[Any], card: ModelCard) -> int:
    """The class count from the output shape when the card has no labels."""
    n = dims[1] - 4 if card.output_kind == "yolov8" else dims[2] - 5
    if not isinstance(n, int) or n < 1:
        raise ArtifactError(f"{card.name}: cannot tell the class count from the output {dims}; pass --labels.")
    return n


_POST = {"classify": _classify, "detect": _detect, "segment": _segment}
