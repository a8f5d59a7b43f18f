"""Make the detectors with NMS inside their graph in tests/data/foreign (issue 20 §2).

Three files, each made by a foreign tool, never by edgecnn (this script is not imported by it):

- ``yolov8_shapes_end2end.onnx``: the real ``yolov8_shapes.onnx`` with its decoding and NMS appended
  as standard ONNX ops (``onnx.helper``): one ``[1, 100, 6]`` output of x1, y1, x2, y2, score,
  class, padded with zero rows, as Ultralytics' ``yolo export nms=True`` lays it out. The NMS is
  the one edgecnn runs on the raw output (best class per anchor, class-aware through Ultralytics'
  box offset of 7680 per class, IoU 0.45), so both must give the same boxes.
- ``tfnms_tiny.onnx``: a tiny Keras detector (random weights: only the format matters) whose
  graph ends in ``tf.image.combined_non_max_suppression``, converted by tf2onnx (ONNX
  ``NonMaxSuppression``); outputs named as TF's Object Detection API names them.
- ``ssd_tiny.tflite``: the same Keras network ending in TFLite's ``TFLite_Detection_PostProcess``
  custom op, made as TF's Object Detection API does (``export_tflite_graph_lib_tf2``: a function
  with ``experimental_implements`` that the TFLite converter replaces by the op).

Run with edgecnn's environment (tensorflow, tf2onnx and onnx are its [train]/[export] extras)::

    .venv/bin/python tools/make_nms_models.py --out tests/data/foreign
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SIZE = 64  # the Keras detector's input side
GRID = 8  # its anchors: one per cell of an 8x8 grid (stride 8)
CLASSES = 3
END2END_ROWS = 100


def end2end_from_yolov8(src: Path, dst: Path) -> None:
    """Append decoding + NMS + padding to the real YOLOv8 file's [1, 4 + C, A] output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    raw = graph.output[0].name
    def c(name: str, value: object, dtype: type = np.float32) -> None:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    c("e2e_half", 0.5)
    c("e2e_maxwh", 7680.0)  # Ultralytics' per-class box offset (class-aware NMS in one call)
    c("e2e_s0", [0], np.int64), c("e2e_s2", [2], np.int64), c("e2e_s4", [4], np.int64)
    c("e2e_big", [1 << 30], np.int64), c("e2e_ax2", [2], np.int64), c("e2e_ax1", [1], np.int64)
    c("e2e_maxout", [END2END_ROWS], np.int64), c("e2e_iou", [0.45]), c("e2e_score", [0.001])
    c("e2e_col", 2, np.int64), c("e2e_rows", [END2END_ROWS], np.int64)
    c("e2e_zeros", np.zeros((1, END2END_ROWS, 6)))
    n = helper.make_node
    graph.node.extend([
        n("Transpose", [raw], ["e2e_t"], perm=[0, 2, 1]),  # [1, A, 4 + C]
        n("Slice", ["e2e_t", "e2e_s0", "e2e_s2", "e2e_ax2"], ["e2e_xy"]),
        n("Slice", ["e2e_t", "e2e_s2", "e2e_s4", "e2e_ax2"], ["e2e_wh"]),
        n("Slice", ["e2e_t", "e2e_s4", "e2e_big", "e2e_ax2"], ["e2e_cls_scores"]),
        n("Mul", ["e2e_wh", "e2e_half"], ["e2e_halfwh"]),
        n("Sub", ["e2e_xy", "e2e_halfwh"], ["e2e_x1y1"]),
        n("Add", ["e2e_xy", "e2e_halfwh"], ["e2e_x2y2"]),
        n("Concat", ["e2e_x1y1", "e2e_x2y2"], ["e2e_xyxy"], axis=2),
        n("ReduceMax", ["e2e_cls_scores"], ["e2e_best"], axes=[2], keepdims=1),  # [1, A, 1]
        n("ArgMax", ["e2e_cls_scores"], ["e2e_cls_i"], axis=2, keepdims=1),
        n("Cast", ["e2e_cls_i"], ["e2e_cls"], to=TensorProto.FLOAT),
        n("Mul", ["e2e_cls", "e2e_maxwh"], ["e2e_offset"]),
        n("Add", ["e2e_xyxy", "e2e_offset"], ["e2e_nms_boxes"]),
        n("Transpose", ["e2e_best"], ["e2e_nms_scores"], perm=[0, 2, 1]),  # [1, 1, A]
        n("NonMaxSuppression", ["e2e_nms_boxes", "e2e_nms_scores", "e2e_maxout", "e2e_iou", "e2e_score"],
          ["e2e_selected"]),  # [M, 3]: batch, class, box
        n("Gather", ["e2e_selected", "e2e_col"], ["e2e_keep"], axis=1),
        n("Concat", ["e2e_xyxy", "e2e_best", "e2e_cls"], ["e2e_rows_all"], axis=2),  # [1, A, 6]
        n("Gather", ["e2e_rows_all", "e2e_keep"], ["e2e_kept"], axis=1),  # [1, M, 6]
        n("Concat", ["e2e_kept", "e2e_zeros"], ["e2e_padded"], axis=1),
        n("Slice", ["e2e_padded", "e2e_s0", "e2e_rows", "e2e_ax1"], ["output0_nms"]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("output0_nms", TensorProto.FLOAT, [1, END2END_ROWS, 6]))
    for prop in model.metadata_props:
        if prop.key == "description":
            prop.value = ("yolov8_shapes.onnx with decoding and NMS appended by tools/make_nms_models.py "
                          "(onnx.helper): "
                          "output [1, 100, 6] = x1, y1, x2, y2, score, class, as Ultralytics' export nms=True")
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _keras_head():
    """A tiny random-weight conv net: (1, 64, 64, 3) in [-1, 1] -> box offsets (1, A, 4) and
    class logits (1, A, C), one anchor per cell of the 8x8 grid."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), batch_size=1, name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c3")(x)  # 8x8
    box = keras.layers.Reshape((GRID * GRID, 4), name="box")(keras.layers.Conv2D(4, 1, name="box_conv")(x))
    cls = keras.layers.Reshape((GRID * GRID, CLASSES), name="cls")(keras.layers.Conv2D(CLASSES, 1, name="cls_conv")(x))
    return keras.Model(inp, [box, cls])


def _anchors() -> np.ndarray:
    """(A, 4) anchors as y_center, x_center, h, w (normalized), the SSD convention."""
    centre = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
    ys, xs = np.meshgrid(centre, centre, indexing="ij")
    side = np.full_like(ys, 2.0 / GRID)
    return np.stack([ys, xs, side, side], axis=-1).reshape(-1, 4)


def tf_combined_nms(dst: Path) -> None:
    """The Keras head, SSD box decoding and tf.image.combined_non_max_suppression, via tf2onnx."""
    import tensorflow as tf
    import tf2onnx

    head = _keras_head()

    @tf.function(input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image")])
    def detect(image):
        box, logits = head(image)
        anchors = tf.constant(_anchors())  # made inside: a captured tensor would become a graph input
        yx = anchors[None, :, :2] + 0.1 * box[..., :2] * anchors[None, :, 2:]
        hw = anchors[None, :, 2:] * tf.exp(0.2 * box[..., 2:])
        yxyx = tf.concat([yx - hw / 2, yx + hw / 2], axis=-1)
        boxes, scores, classes, count = tf.image.combined_non_max_suppression(
            yxyx[:, :, None, :], tf.sigmoid(logits), max_output_size_per_class=10, max_total_size=20,
            iou_threshold=0.5, score_threshold=0.05, clip_boxes=True)
        return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
                "num_detections": count}

    tf2onnx.convert.from_function(detect, input_signature=detect.input_signature, opset=17, output_path=str(dst))


def tflite_ssd(dst: Path) -> None:
    """The Keras head ending in TFLite_Detection_PostProcess, as TF's Object Detection API exports SSDs."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image")
    # the head's weights frozen to constants (Keras 3's variables would stay uninitialized resources in the
    # .tflite); only the head: freezing the whole function would inline the post-processing stand-in
    head = convert_variables_to_constants_v2(tf.function(_keras_head()).get_concrete_function(spec))
    implements = " ".join([
        'name: "TFLite_Detection_PostProcess"',
        'attr { key: "max_detections" value { i: 20 } }',
        'attr { key: "max_classes_per_detection" value { i: 1 } }',
        'attr { key: "use_regular_nms" value { b: false } }',
        'attr { key: "nms_score_threshold" value { f: 0.050000 } }',
        'attr { key: "nms_iou_threshold" value { f: 0.500000 } }',
        'attr { key: "y_scale" value { f: 10.000000 } }',
        'attr { key: "x_scale" value { f: 10.000000 } }',
        'attr { key: "h_scale" value { f: 5.000000 } }',
        'attr { key: "w_scale" value { f: 5.000000 } }',
        f'attr {{ key: "num_classes" value {{ i: {CLASSES} }} }}'])

    @tf.function(experimental_implements=implements)
    def postprocess(box_encodings, class_predictions, anchors):  # replaced by the op; a stand-in body
        del box_encodings, class_predictions, anchors
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    @tf.function(input_signature=[spec])
    def detect(image):
        box, logits = head(image)
        scores = tf.concat([tf.zeros_like(logits[..., :1]), tf.sigmoid(logits)], axis=-1)  # background first
        return postprocess(box, scores, tf.constant(_anchors()))

    # with a trackable object the converter goes through a SavedModel, which keeps the implements function
    converter = tf.lite.TFLiteConverter.from_concrete_functions([detect.get_concrete_function()], tf.Module())
    converter.allow_custom_ops = True
    dst.write_bytes(converter.convert())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/foreign"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    end2end_from_yolov8(args.out / "yolov8_shapes.onnx", args.out / "yolov8_shapes_end2end.onnx")
    tf_combined_nms(args.out / "tfnms_tiny.onnx")
    tflite_ssd(args.out / "ssd_tiny.tflite")
    for name in ("yolov8_shapes_end2end.onnx", "tfnms_tiny.onnx", "ssd_tiny.tflite"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
