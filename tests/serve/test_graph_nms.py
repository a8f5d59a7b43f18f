"""`edgecnn serve` answers a detector with NMS in its graph (issue 20 §2) as it answers YOLO's:
boxes on the uploaded image, from the same Detector."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.serve.conftest import running_server

httpx = pytest.importorskip("httpx")

END2END = Path(__file__).parents[1] / "data" / "foreign" / "yolov8_shapes_end2end.onnx"


def _photo() -> bytes:
    img = Image.new("RGB", (240, 160), (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 30, 90, 120), fill=(220, 30, 30))
    draw.rectangle((140, 50, 220, 100), fill=(30, 40, 220))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_serves_an_end2end_detector_boxes_in_image_pixels():
    from edgecnn.runtime import Detector

    with running_server(END2END) as srv, httpx.Client(base_url=srv.url) as c:
        info = c.get("/v1/models/yolov8_shapes_end2end").json()
        assert info["task"] == "detect" and info["card"]["output_kind"] == "end2end"
        r = c.post("/v1/models/yolov8_shapes_end2end:predict", content=_photo(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
    local = Detector(END2END).predict([_photo()])[0]
    assert pred == local.to_dict()
    boxes = {d["label"]: d["box"] for d in pred["detections"]}
    assert set(boxes) == {"red", "blue"}
    np.testing.assert_allclose(boxes["red"], [20, 30, 90, 120], atol=6)  # pixels of the 240x160 upload
