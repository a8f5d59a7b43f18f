"""A card for a model that has none: read from its graph signature, its ``metadata_props`` and
the model flags (stdlib only).

:func:`infer_card` builds the card of a model without one: what the file carries (an edgecnn
card, Ultralytics ``metadata_props``, class names kept under ``names``/``character``/..., the
input shape and layout, the output shapes: a classifier, a YOLOv8/v5/YOLOX or in-graph-NMS
detector, a segmenter) comes first, the flags (:class:`edgecnn.presets.ModelOverrides`) fill in or
override the rest, and what is still unknown is assumed and said in one line.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecnn.card import OUTPUT_KINDS, ModelCard
from edgecnn.errors import ArtifactError
from edgecnn.nms_layouts import BOX_KINDS, NMS_KINDS, NmsOutputs, nms_outputs
from edgecnn.presets import PREPROCESS_PRESETS, ModelOverrides, TensorInfo, short_list

__all__ = ["infer_card", "input_geometry", "ultralytics_metadata", "metadata_labels", "yolo_anchor_counts",
           "detect_layout", "DETECT_LAYOUTS"]

# YOLO heads: one anchor per cell at strides 8, 16, 32 (v8/v11), three per cell (v5).
_YOLO_STRIDES = (8, 16, 32)
# Ultralytics' own task names -> edgecnn's. Its "segment" is instance segmentation (boxes plus mask
# coefficients and prototypes), not the per-pixel class maps of edgecnn's segment head.
_ULTRALYTICS_TASKS = {"classify": "classify", "detect": "detect", "segment": "raw", "pose": "raw", "obb": "raw"}


DETECT_LAYOUTS = ("yolov8 [N, 4 + classes, anchors], yolov5 [N, 3 x anchors, 5 + classes], yolox [N, anchors, "
                  "5 + classes] (raw grid outputs); end2end [N, K, 6] (x1, y1, x2, y2, score, class), boxes-xyxy or "
                  "boxes-yxyx (boxes [N, K, 4], scores and classes [N, K] named so, count [N]) (NMS in the graph)")


def _graph_nms(outputs: Sequence[TensorInfo], overrides: ModelOverrides) -> NmsOutputs | None:
    """The in-graph-NMS layout of ``outputs`` (the one --output-layout names, if it names one)."""
    given = overrides.output_kind if overrides.output_kind in NMS_KINDS else None
    if overrides.output_kind is not None and given is None:
        return None
    return nms_outputs([o.name for o in outputs], [o.shape for o in outputs], given)


def yolo_anchor_counts(size: tuple[int, int], strides: Sequence[int] = _YOLO_STRIDES) -> dict[str, int]:
    """How many predictions each YOLO layout makes for an input of ``size`` = (height, width):
    one per cell of each stride (YOLOv8/YOLO11, cells rounded up; YOLOX, cells rounded down as its
    ``H // stride`` grids), three per cell (YOLOv5)."""
    ceil = sum(-(-size[0] // s) * -(-size[1] // s) for s in strides)
    return {"yolov8": ceil, "yolov5": 3 * ceil, "yolox": sum((size[0] // s) * (size[1] // s) for s in strides)}


def detect_layout(shape: Sequence[Any], size: tuple[int, int], num_classes: int | None = None, *,
                  yolox: bool = True) -> str | None:
    """The YOLO layout a 3-D output ``shape`` has for an input of ``size`` (and ``num_classes``
    when known), or None when it fits none or more than one; ``yolox=False`` for a file
    Ultralytics made (it never writes YOLOX's layout)."""
    s = [_fixed(d) for d in shape]
    if len(s) != 3:
        return None
    anchors = yolo_anchor_counts(size)
    fits = []
    if s[2] == anchors["yolov8"] and (s[1] or 0) > 4 and num_classes in (None, (s[1] or 0) - 4):
        fits.append("yolov8")
    if (s[2] or 0) > 5 and num_classes in (None, (s[2] or 0) - 5):
        fits += [k for k in ("yolov5", "yolox") if s[1] == anchors[k] and (yolox or k != "yolox")]
    return fits[0] if len(fits) == 1 else None


def ultralytics_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """``imgsz``, ``names``, ``task`` and ``stride`` from an Ultralytics ONNX export's ``metadata_props``.

    Ultralytics stores them as Python literals (``"{0: 'person', 1: 'bicycle'}"``, ``"[640, 640]"``);
    unparsable values are left out.
    """
    out: dict[str, Any] = {}
    for key in ("imgsz", "names", "task", "stride"):
        if key not in props:
            continue
        try:
            value = ast.literal_eval(props[key])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = props[key] if key == "task" else None
        if key == "imgsz" and isinstance(value, int):
            value = [value, value]
        if key == "imgsz" and not (isinstance(value, (list, tuple)) and len(value) == 2):
            continue
        if key == "names" and isinstance(value, dict):
            value = [str(value[k]) for k in sorted(value)]
        if key == "names" and not isinstance(value, (list, tuple)):
            continue
        if value is not None:
            out[key] = value
    return out


# ------------------------------------------------------------------------------ card inference


@dataclass
class _Inferred:
    values: dict[str, Any] = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)


_LABEL_KEYS = ("names", "labels", "classes", "class_names", "character")


def metadata_labels(props: Mapping[str, str]) -> tuple[str, ...] | None:
    """Class names a file keeps in its own ``metadata_props`` under a ``names``, ``labels``,
    ``classes``, ``class_names`` or ``character`` entry (PaddleOCR/RapidOCR files: one per line):
    a Python or JSON list or ``{index: name}`` dict, or one name per line. None when there is none.
    """
    import ast

    for key in _LABEL_KEYS:
        text = props.get(key)
        if not isinstance(text, str) or not text.strip():
            continue
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = [line.strip() for line in text.splitlines() if line.strip()]
        if isinstance(value, dict):
            value = [value[k] for k in sorted(value)]
        if isinstance(value, (list, tuple)) and len(value) > 1 and all(isinstance(v, (str, int)) for v in value):
            return tuple(str(v) for v in value)
    return None


def infer_card(name: str, *, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo],
               overrides: ModelOverrides | None = None, embedded: ModelCard | None = None,
               metadata: Mapping[str, str] | None = None, softmax_output: bool | None = None,
               architecture: str = "external") -> tuple[ModelCard, str | None]:
    """The card of a model: its embedded card, else its graph and metadata, with flags applied.

    Args:
        name: card name (usually the file stem).
        inputs, outputs: the graph's I/O; the first input must be one 4-D float image batch.
        overrides: values from the command line; they win over everything the file says.
        embedded: an edgecnn card found in the file, if any.
        metadata: the ONNX ``metadata_props`` (Ultralytics keys are read).
        softmax_output: whether the first output comes out of a softmax (None: unknown).
        architecture: the card's ``architecture``.

    Returns:
        The card, and a one-line statement of what was assumed (None when nothing was).

    Raises:
        ArtifactError: for a graph that is not an image model, or values that contradict the graph,
            naming the flag that fixes it.
    """
    overrides = overrides or ModelOverrides()
    if embedded is not None:
        return overrides.apply(embedded.replace(input_name=inputs[0].name, output_name=outputs[0].name)), None
    inp = _image_input(name, inputs)
    ultra = ultralytics_metadata(metadata or {})
    got = _Inferred()
    layout, channels, size = input_geometry(name, inp, overrides, ultra)
    got.values.update(input_name=inp.name, output_name=outputs[0].name, layout=layout, channels=channels,
                      input_size=size)
    _task_and_outputs(name, outputs, size, overrides, ultra, softmax_output, got, metadata_labels(metadata or {}))
    norm = overrides.normalization(channels)
    if not norm and got.values.get("normalization") != "yolox":  # YOLOX's raw pixels are set already
        preset = "unit"
        norm = {**dict(zip(("mean", "std"), PREPROCESS_PRESETS[preset].for_channels(channels))),
                "normalization": "ultralytics" if ultra else "assumed"}
        if not ultra:
            got.assumed.insert(0, "x / 255 (pass --preprocess or --mean/--std if it was trained otherwise)")
    got.values.update(norm)
    if overrides.channel_order is not None and channels == 3:
        got.values["channel_order"] = overrides.channel_order
    got.values.update(overrides.fitting())
    if overrides.batch_axis is not None:
        got.values["batch_axis"] = overrides.batch_axis
    card = ModelCard(name=name, architecture=architecture, **got.values)
    if not got.assumed:
        return card, None
    return card, f"{name} has no model card; assuming " + "; ".join(got.assumed) + "."


def _image_input(name: str, inputs: Sequence[TensorInfo]) -> TensorInfo:
    if len(inputs) != 1:
        raise ArtifactError(f"{name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); edgecnn "
                            "handles models with one image input.")
    inp = inputs[0]
    if inp.dtype != "float32" or len(inp.shape) != 4:
        raise ArtifactError(f"{name}: input {inp.name} is {inp.dtype} {list(inp.shape)}; edgecnn handles one "
                            "float32 4-D image batch (NCHW or NHWC).")
    return inp


def _fixed(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def input_geometry(name: str, inp: TensorInfo, overrides: ModelOverrides,
                   ultra: Mapping[str, Any] | None = None) -> tuple[str, int, tuple[int, int]]:
    """Layout, channels and (height, width) of an image input, from its shape and the flags.

    Raises:
        ArtifactError: if the shape and the flags disagree, or a value is still unknown (the
            message names the flag that supplies it).
    """
    ultra = ultra or {}
    s = [_fixed(d) for d in inp.shape]
    looks_nchw, looks_nhwc = s[1] in (1, 3) and s[3] not in (1, 3), s[3] in (1, 3) and s[1] not in (1, 3)
    layout = overrides.layout or ("nchw" if looks_nchw else "nhwc" if looks_nhwc else None)
    if layout is None:
        if s[1] in (1, 3) and s[3] in (1, 3):  # e.g. [N, 3, 3, 3]: both readings fit
            raise ArtifactError(f"{name}: input {inp.name} {list(inp.shape)} could be NCHW or NHWC; pass --layout.")
        layout = "nhwc"
    ch_axis, hw = (1, s[2:4]) if layout == "nchw" else (3, s[1:3])
    channels = s[ch_axis]
    if overrides.channels is not None:
        if channels is not None and channels != overrides.channels:
            raise ArtifactError(f"{name}: input {inp.name} {list(inp.shape)} has {channels} channels in "
                                f"{layout.upper()}, not --channels {overrides.channels}; check --layout/--channels.")
        channels = overrides.channels
    if channels not in (1, 3):
        raise ArtifactError(f"{name}: input {inp.name} {list(inp.shape)} read as {layout.upper()} has "
                            f"{channels if channels else 'a dynamic number of'} channels; edgecnn takes 1 (gray) or 3 "
                            "(RGB) channels: pass --layout nchw|nhwc and --channels 1|3.")
    size: tuple[int, ...] | None = (int(hw[0]), int(hw[1])) if hw[0] and hw[1] else None
    if overrides.input_size is not None:
        fixed = [(g, w) for g, w in zip(hw, overrides.input_size) if g is not None and g != w]
        if fixed:
            raise ArtifactError(f"{name}: input {inp.name} {list(inp.shape)} is fixed at {hw[0]}x{hw[1]}; "
                                f"--input-size {overrides.input_size[0]}x{overrides.input_size[1]} does not fit it.")
        size = overrides.input_size
    elif size is None and "imgsz" in ultra:
        size = tuple(int(v) for v in ultra["imgsz"])
    if size is None:
        raise ArtifactError(f"{name}: input {inp.name} {list(inp.shape)} has a dynamic height/width; pass "
                            "--input-size HxW (the size the model was trained at).")
    return layout, int(channels or 0), (int(size[0]), int(size[1]))


def _segment_classes(shape: Sequence[int | None], layout: str) -> int | None:
    """Classes of a 4-D segmentation output: its class axis is the smaller of axes 1 and 3 (classes
    are far fewer than pixels; a tie follows the input layout); one channel is a foreground score
    (two classes: background and the thing)."""
    if len(shape) != 4 or not (shape[1] or shape[3]):
        return None
    a, b = shape[1], shape[3]
    if a and b:
        c = a if a < b or (a == b and layout == "nchw") else b
    else:
        c = a or b or 0  # one of them is known (checked above)
    return 2 if c == 1 else c


def _detector_preprocessing(kind: str, overrides: ModelOverrides, ultra: Mapping[str, Any], got: _Inferred) -> None:
    """How a detector of output layout ``kind`` is fed, when the file does not say: Ultralytics'
    letterbox and stride, a stretch for TF/TFLite box outputs, YOLOX's own preprocessing."""
    got.values.update(resize="letterbox", stride=int(ultra.get("stride", max(_YOLO_STRIDES))))
    if kind in BOX_KINDS and not ultra:  # TF/TFLite SSDs and most NMS exports stretch the image
        got.values.update(resize="stretch")
        got.assumed.append(f"{kind} outputs ({'y' if kind == 'boxes-yxyx' else 'x'} first; pass --output-layout "
                           f"{'boxes-xyxy' if kind == 'boxes-yxyx' else 'boxes-yxyx'} for the other order), "
                           "resize stretch (pass --resize letterbox if it was trained so)")
    if kind == "yolox":  # YOLOX's own preproc: cv2.resize to the top left of a 114 canvas, 0-255 BGR
        got.values.update(resize="keep-aspect", pad_value=114, resample="cv2-linear")
        if not overrides.normalization_given and not ultra:
            channels = got.values["channels"]
            got.values.update(zip(("mean", "std"), PREPROCESS_PRESETS["none"].for_channels(channels)),
                              normalization="yolox", channel_order="BGR" if channels == 3 else "RGB")
            got.assumed.append("YOLOX's preprocessing: raw 0-255 BGR pixels, keep-aspect with pad 114, OpenCV's "
                               "linear resize (pass --preprocess/--channels-order/--resize/--resample if it was "
                               "trained otherwise)")


def _task_and_outputs(name: str, outputs: Sequence[TensorInfo], size: tuple[int, int], overrides: ModelOverrides,
                      ultra: Mapping[str, Any], softmax_output: bool | None, got: _Inferred,
                      file_labels: tuple[str, ...] | None = None) -> None:
    """Task, output kind, class names, resize and stride from the outputs, metadata and flags."""
    first = [_fixed(d) for d in outputs[0].shape]
    guess, kind, n_classes = "raw", "raw", None
    if len(outputs) == 1 and len(first) == 2 and first[1]:
        guess, n_classes = "classify", first[1]
    elif (seen := detect_layout(first, size, yolox=not ultra)) is not None:
        # detect_layout recognised the shape, so its class axis is known
        n_classes = int(first[1] or 0) - 4 if seen == "yolov8" else int(first[2] or 0) - 5
        guess, kind = "detect", seen
    elif (graph_nms := _graph_nms(outputs, overrides)) is not None:
        guess, kind = "detect", graph_nms.kind
    task = overrides.task or _ULTRALYTICS_TASKS.get(str(ultra.get("task")), None) or guess
    if overrides.output_kind is not None and overrides.output_kind not in OUTPUT_KINDS[task]:
        task = next(t for t, kinds in OUTPUT_KINDS.items() if overrides.output_kind in kinds)  # yolox: detect
    names = overrides.class_names or (tuple(ultra["names"]) if "names" in ultra else None)
    if task == "classify":
        if not (len(first) == 2 and first[1]):
            raise ArtifactError(f"{name}: output {outputs[0].name} {list(outputs[0].shape)} is not a (batch, classes) "
                                "score vector; pass --task detect|segment|raw for another kind of model.")
        n_classes = first[1]
        kind = "probabilities" if softmax_output else "logits"
    elif task == "detect":
        if guess != "detect" and (overrides.output_kind in NMS_KINDS or not (len(first) == 3 and (
                (first[1] or 0) > 4 or (first[2] or 0) > 5))):
            raise ArtifactError(
                f"{name}: output {outputs[0].name} {list(outputs[0].shape)} fits none of the detection layouts "
                f"edgecnn decodes ({DETECT_LAYOUTS}); pass --task raw for the outputs as they are (or --task "
                "segment for a per-pixel map).")
        kind = kind if guess == "detect" else "yolov8"
        _detector_preprocessing(kind, overrides, ultra, got)
    elif task == "segment":
        kind = "probabilities" if softmax_output else "logits"
        n_classes = _segment_classes(first, got.values.get("layout", "nchw"))
    else:
        kind = "raw"
    if names is not None and n_classes is not None and len(names) != n_classes:
        raise ArtifactError(f"{name}: the model has {n_classes} classes but {len(names)} labels were given "
                            f"({short_list(list(names))}); pass --labels with {n_classes} names.")
    if names is None and file_labels is not None:
        # the file's own labels: where their count is the model's class count (for a raw model,
        # a size one of its outputs has: PicoDet's per-level [N, anchors, classes] scores)
        fits = len(file_labels) == n_classes if n_classes else task == "detect" and kind in NMS_KINDS or \
            task == "raw" and any(len(file_labels) in [_fixed(d) for d in o.shape[1:]] for o in outputs)
        names = file_labels if fits else None
    if names is None and task == "detect" and kind in NMS_KINDS:
        got.assumed.append("labels: the class index (pass --labels FILE|a,b,c)")
    if names is None and n_classes and task in ("classify", "detect", "segment"):
        names = tuple(str(i) for i in range(n_classes))
        got.assumed.append(f"labels 0..{n_classes - 1} (pass --labels FILE|a,b,c)")
    if task == "raw" and not overrides.task and "task" not in ultra:
        got.assumed.append(f"task raw for outputs {', '.join(str(list(o.shape)) for o in outputs[:4])} "
                           "(pass --task classify|detect|segment)")
    got.values.update(task=task, output_kind=overrides.output_kind or kind, class_names=names or ())
