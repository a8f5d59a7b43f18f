"""edgecnn batch (issue 24): one Parquet row per input, the same answers as predict, resumable after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecnn.batch import BatchConfig, list_inputs, run_batch
from edgecnn.errors import ConfigError, DataError

pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "edgecnn" / "assets" / "models" / "seed_cnn_cifar10.onnx"
YOLO = ROOT / "tests" / "data" / "foreign" / "yolov8_shapes.onnx"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_data) -> Path:
    """40 CIFAR-10 test images as PNG and JPEG in nested folders, one corrupt file, one non-image."""
    root = tmp_path_factory.mktemp("photos")
    x_test = sample_data[2]
    for i, image in enumerate(x_test[:40]):
        folder = root / ("a" if i % 2 else "b" / Path("deep"))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img{i:03d}.{'png' if i % 3 else 'jpg'}")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def rows(out: Path) -> list[dict]:
    return sorted(pq.read_table(out).to_pylist(), key=lambda r: r["path"])


def predict_json(model: Path, images: list[str], *extra: str) -> dict[str, dict]:
    from edgecnn.cli import main

    result = CliRunner().invoke(main, ["predict", str(model), *images, "--json", *extra])
    return {p["image"]: p for p in json.loads(result.stdout)["predictions"]}


def test_folder_to_parquet_answers_as_predict_with_an_error_row(photos, tmp_path):
    summary = run_batch(SEED, photos, BatchConfig(out=tmp_path / "out", shard_size=16, batch_size=8, workers=2,
                                                  progress=False))
    got = rows(tmp_path / "out")
    assert (summary.inputs, summary.images, summary.errors, summary.shards_written) == (41, 41, 1, 3)
    assert len(got) == 41 and len({r["path"] for r in got}) == 41  # one row per input, notes.txt is no input
    broken = next(r for r in got if r["path"].endswith("broken.png"))
    assert broken["error"] and broken["label"] is None and "broken.png" in broken["error"]
    ok = [r for r in got if r["error"] is None]
    want = predict_json(SEED, [r["path"] for r in ok])
    for r in ok:
        top = want[r["path"]]["top_k"]
        assert r["label"] == top[0]["label"] and [t["index"] for t in r["top_k"]] == [t["index"] for t in top]
        assert r["score"] == pytest.approx(top[0]["probability"], abs=1e-6)
        assert (r["width"], r["height"]) == (32, 32) and r["model"] == "seed_cnn_cifar10_aug"
    import hashlib

    assert {r["model_sha256"] for r in got} == {hashlib.sha256(SEED.read_bytes()).hexdigest()}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "_manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]


def test_sources_glob_list_and_npz(photos, tmp_path, sample_data):
    assert len(list_inputs(f"{photos}/**/*.png")) == 27  # 26 PNGs and the broken one
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\n{photos / 'a' / 'img001.png'}\n\n../{tmp_path.name}/missing.png\n")
    missing = str(tmp_path / f"../{tmp_path.name}/missing.png")
    assert list_inputs(listing).names == (str(photos / "a" / "img001.png"), missing)
    np.savez(tmp_path / "x.npz", x_test=sample_data[2][:10])
    summary = run_batch(SEED, tmp_path / "x.npz", BatchConfig(out=tmp_path / "npz", progress=False))
    got = pq.read_table(tmp_path / "npz").to_pylist()
    assert summary.errors == 0 and [r["path"] for r in got] == [f"{tmp_path / 'x.npz'}#{i}" for i in range(10)]
    listed = run_batch(SEED, listing, BatchConfig(out=tmp_path / "listed", progress=False))
    assert listed.errors == 1 and "missing.png" in next(r for r in rows(tmp_path / "listed") if r["error"])["error"]
    with pytest.raises(DataError, match="does not exist"):
        list_inputs(tmp_path / "nowhere")
    with pytest.raises(DataError, match="names no image"):
        list_inputs(f"{tmp_path}/*.webp")


def test_detector_rows_hold_the_boxes_predict_gives(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "export"))
    from test_self_contained import scenes

    for i, image in enumerate(scenes(6)):
        Image.fromarray(image).save(tmp_path / f"s{i}.png")
    run_batch(YOLO, tmp_path, BatchConfig(out=tmp_path / "out", progress=False))
    got = rows(tmp_path / "out")
    want = predict_json(YOLO, [r["path"] for r in got])
    assert sum(len(r["detections"]) for r in got) >= 6
    for r in got:
        ref = want[r["path"]]["detections"]
        assert [d["index"] for d in r["detections"]] == [d["index"] for d in ref]
        for d, e in zip(r["detections"], ref):
            assert d["box"] == pytest.approx(e["box"], abs=0.01)


def test_out_with_results_needs_resume_and_the_same_job(photos, tmp_path):
    from edgecnn.cli import main

    out = tmp_path / "out"
    run_batch(SEED, photos, BatchConfig(out=out, shard_size=16, progress=False))
    with pytest.raises(ConfigError, match="--resume"):
        run_batch(SEED, photos, BatchConfig(out=out, shard_size=16, progress=False))
    with pytest.raises(ConfigError, match="another job.*model_sha256"):
        run_batch(ROOT / "edgecnn" / "assets" / "models" / "seed_cnn_cifar10.int8.onnx", photos,
                  BatchConfig(out=out, shard_size=16, resume=True, progress=False))
    with pytest.raises(ConfigError, match="another job.*shard_size"):
        run_batch(SEED, photos, BatchConfig(out=out, shard_size=8, resume=True, progress=False))
    result = CliRunner().invoke(main, ["batch", str(SEED), str(photos), "--out", str(out), "--quiet"])
    assert result.exit_code == 1 and "--resume" in result.output and "Traceback" not in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.csv").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        run_batch(SEED, photos, BatchConfig(out=tmp_path / "other", progress=False))


def test_resume_redoes_only_missing_or_half_written_shards(photos, tmp_path):
    out = tmp_path / "out"
    config = BatchConfig(out=out, shard_size=8, progress=False)
    run_batch(SEED, photos, config)
    clean = rows(out)
    (out / "part-00002.parquet").unlink()
    (out / "part-00004.parquet").write_bytes(b"PAR1 half")  # a shard cut short (never by edgecnn: it renames)
    (out / ".part-00002.abc.tmp.parquet").write_bytes(b"half")  # what a kill during a write leaves
    again = run_batch(SEED, photos, BatchConfig(out=out, shard_size=8, resume=True, progress=False))
    assert (again.shards_written, again.shards_skipped, again.images) == (2, 4, 16)
    assert rows(out) == clean and not list(out.glob(".part-*"))


@pytest.mark.slow
def test_kill_9_at_any_instant_then_resume_loses_and_repeats_no_row(tmp_path, sample_data):
    """The real thing: ``edgecnn batch`` killed with SIGKILL while it writes, three times, then resumed."""
    np.savez(tmp_path / "x.npz", x_test=np.concatenate([sample_data[2]] * 4))  # 2,000 images
    args = [sys.executable, "-m", "edgecnn.cli", "batch", str(SEED), str(tmp_path / "x.npz"), "--out",
            str(tmp_path / "out"), "--shard-size", "100", "--batch-size", "25", "--quiet"]
    rng = np.random.default_rng(0)
    for attempt in range(3):
        proc = subprocess.Popen(args + (["--resume"] if attempt else []), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        done_before = len(list((tmp_path / "out").glob("part-*")))
        while time.monotonic() < deadline and len(list((tmp_path / "out").glob("part-*"))) <= done_before:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.05)))  # somewhere inside the next shard
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(args + ["--resume"], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert final.returncode == 0, final.stderr
    got = pq.read_table(tmp_path / "out").to_pylist()
    names = [r["path"] for r in got]
    assert len(names) == 2000 and len(set(names)) == 2000
    assert sorted(names, key=lambda n: int(n.rsplit("#", 1)[1])) == [f"{tmp_path / 'x.npz'}#{i}" for i in range(2000)]
    assert json.loads(final.stdout)["shards_skipped"] >= 3  # the killed runs had finished shards
    clean = run_batch(SEED, tmp_path / "x.npz", BatchConfig(out=tmp_path / "clean", shard_size=100, progress=False))
    assert clean.images == 2000
    assert sorted(got, key=lambda r: r["path"]) == sorted(pq.read_table(tmp_path / "clean").to_pylist(),
                                                         key=lambda r: r["path"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "out", "x.npz"]  # nothing left in the cwd


@pytest.mark.slow
def test_ray_engine_writes_the_local_rows_and_loads_the_model_once_per_actor(photos, tmp_path):
    pytest.importorskip("ray")
    local = run_batch(SEED, photos, BatchConfig(out=tmp_path / "local", shard_size=16, progress=False))
    ray = run_batch(SEED, photos, BatchConfig(out=tmp_path / "ray", engine="ray", workers=2, shard_size=16,
                                              batch_size=8, progress=False))
    assert (ray.images, ray.errors) == (local.images, local.errors) == (41, 1)
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    note = next(n for n in ray.notes if n.startswith("Ray:"))
    assert "each opened the model once" in note and "of 0.75 CPU" in note  # 2 actors on 2 CPUs: fractional
