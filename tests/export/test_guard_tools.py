"""The guard's benchmark tools (issue 18) run end to end: tools/guard_false_refusals.py on a tiny
export, tools/guard_raw_sqnr.py on a real foreign file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_false_refusal_tool_counts_refusals_of_a_valid_export(tmp_path, seed_export, capsys):
    tool = _tool("guard_false_refusals")
    _, folder = seed_export
    out = tmp_path / "fr.json"
    assert tool.main(["--model", str(folder / "model.onnx"), "--trials", "2", "--images", "40,48",
                      "--valid-drop", "100", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (model,) = result["models"]
    assert model["truth"]["images"] == 150 and model["truth"]["drop_pp"] is not None
    runs = model["runs"]["now"]
    assert len(runs) == 2 and all(40 <= r["n"] <= 48 for r in runs)
    assert all(r["judged_images"] == r["n"] for r in runs)  # under 64 images: all of them judge
    assert all(r["outcome"] in ("kept", "unsure", "exceeded") for r in runs)
    assert all(r["refused"] == (r["outcome"] == "exceeded") for r in runs)  # lenient: only evidence refuses
    assert "valid exports refused" in capsys.readouterr().out


def test_raw_sqnr_tool_measures_every_output_of_each_variant(tmp_path, capsys):
    out = tmp_path / "sqnr.json"
    assert _tool("guard_raw_sqnr").main(["--model", "yolov8_shapes.onnx", "--images", "24", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["precision"], r["output"]) for r in rows] == [("int8", "SQNR of the output"),
                                                             ("fp16", "SQNR of the output")]
    assert all(r["low"] <= r["sqnr_db"] <= r["high"] and r["images"] == 24 for r in rows)
    assert rows[1]["sqnr_db"] > rows[0]["sqnr_db"] > 20  # fp16 keeps more than int8; both keep this detector
    assert "yolov8_shapes.onnx int8" in capsys.readouterr().out
