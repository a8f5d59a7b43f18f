"""examples/edge_app: classifies a folder or a frame stream with the runtime alone."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgecnn.runtime import Classifier
from tests.serve.conftest import RUNTIME_DATA, png

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "edge_app" / "classify_folder.py"
# Runs the app, then reports which heavy modules it imported.
WRAPPER = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
           "print(sorted({'tensorflow', 'keras', 'fastapi', 'uvicorn', 'edgecnn.serve'} & set(sys.modules)), "
           "file=sys.stderr)")


def _run(args: list[str], stdin: bytes | None = None) -> tuple[list[dict], str]:
    out = subprocess.run([sys.executable, "-c", WRAPPER, str(APP), *args], input=stdin, capture_output=True,
                         cwd=ROOT, timeout=60, check=True)
    lines = [json.loads(line) for line in out.stdout.decode().splitlines()]
    return lines, out.stderr.decode().strip().splitlines()[-1]


def test_folder_watch_classifies_each_image_and_survives_bad_ones(tmp_path):
    model = RUNTIME_DATA / "tiny_nhwc.onnx"
    pixels = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(png(pixels[0]))
    (tmp_path / "b.jpg").write_bytes(png(pixels[1], "JPEG"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    results, imported = _run([str(tmp_path), "--model", str(model), "--once", "--interval", "0.05",
                              "--out", str(tmp_path / "results.jsonl"), "--top-k", "2"])
    assert imported == "[]"  # no TensorFlow, no server
    by_name = {Path(r["image"]).name: r for r in results}
    assert set(by_name) == {"a.png", "b.jpg", "broken.png"}
    assert "error" in by_name["broken.png"]
    expected = Classifier(model).predict([tmp_path / "a.png"], top_k=2)[0]
    assert by_name["a.png"]["top_k"] == [p.to_dict() for p in expected]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3


def test_frames_on_stdin(tmp_path):
    frames = [png(np.full((8, 8, 3), v, np.uint8)) for v in (0, 128, 255)] + [b"junk"]
    stream = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    results, _ = _run(["-", "--model", str(RUNTIME_DATA / "tiny_nhwc.onnx")], stdin=stream)
    assert [r["image"] for r in results] == ["frame-0", "frame-1", "frame-2", "frame-3"]
    assert all(len(r["top_k"]) == 3 for r in results[:3]) and "error" in results[3]
