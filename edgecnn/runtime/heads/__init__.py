"""Task heads on the runtime core: classification, detection and segmentation post-processing,
their metrics and annotated images (numpy + Pillow only).

>>> from edgecnn.runtime.heads import Detector, Segmenter
>>> Detector("yolov8n.onnx").predict("street.jpg")[0]
"""

from edgecnn.runtime.heads.boxes import box_iou, nms, xywh_to_xyxy
from edgecnn.runtime.heads.classify import Classifier, Prediction, default_model_path
from edgecnn.runtime.heads.detect import (
    Detection,
    Detections,
    Detector,
    decode_yolo,
    output_layout,
    postprocess_yolo,
    select_boxes,
    yolo_layout,
)
from edgecnn.runtime.heads.draw import class_colour, draw_detections, overlay_mask
from edgecnn.runtime.heads.metrics import (
    DetectionMAP,
    DetectionRecords,
    average_precision,
    class_ious,
    confusion_matrices,
    detection_map,
    mean_iou,
    mean_iou_of,
)
from edgecnn.runtime.heads.segment import (
    SegmentationResult,
    Segmenter,
    class_axis,
    class_fractions,
    class_maps,
    postprocess_segmentation,
    to_original,
)

__all__ = ["Classifier", "Prediction", "default_model_path",
           "Detection", "Detections", "Detector", "SegmentationResult", "Segmenter", "DetectionMAP", "box_iou", "nms",
           "xywh_to_xyxy", "decode_yolo", "yolo_layout", "output_layout", "select_boxes", "postprocess_yolo",
           "class_axis", "class_maps", "to_original", "class_fractions", "postprocess_segmentation",
           "average_precision",
           "detection_map", "DetectionRecords", "class_ious", "mean_iou", "confusion_matrices", "mean_iou_of",
           "class_colour", "draw_detections", "overlay_mask"]
