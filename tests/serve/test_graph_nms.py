"""`edgecnn serve` answers a detector with NMS in its graph (issue 20 §2) as it answers YOLO's:
boxes on the uploaded image, from the same Detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import running_server, shapes_png

httpx = pytest.importorskip("httpx")

END2END = Path(__file__).parents[1] / "data" / "foreign" / "yolov8_shapes_end2end.onnx"


def test_serves_an_end2end_detector_boxes_in_image_pixels():
    from edgecnn.runtime import Detector

    with running_server(END2END) as srv, httpx.Client(base_url=srv.url) as c:
        info = c.get("/v1/models/yolov8_shapes_end2end").json()
        assert info["task"] == "detect" and info["card"]["output_kind"] == "end2end"
        r = c.post("/v1/models/yolov8_shapes_end2end:predict", content=shapes_png(),
                   headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
    local = Detector(END2END).predict([shapes_png()])[0]
    assert pred == local.to_dict()
    boxes = {d["label"]: d["box"] for d in pred["detections"]}
    assert set(boxes) == {"red", "blue"}
    np.testing.assert_allclose(boxes["red"], [20, 30, 90, 120], atol=6)  # pixels of the 240x160 upload
