"""The README's quickstart and serve examples, run as written (so the README cannot drift again).

The commands come out of README.md itself. The only changes: the install step is skipped (the
test runs inside the installed environment), and the serve examples get a free port instead of
8000/8080. The files the examples name (cat.png, yolov8n.onnx, unet.onnx, classes.txt) are put
in the working folder first: real files, from the packaged sample and tests/data/foreign.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FOREIGN = ROOT / "tests" / "data" / "foreign"

pytestmark = [pytest.mark.slow, pytest.mark.tf, pytest.mark.export]


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _bash_lines(section: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", _section(section), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"README command failed: {command}\n{result.stdout}\n{result.stderr}"
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A README `edgecnn serve` line started in the background on a free port."""

    def __init__(self, command: str, cwd: Path) -> None:
        self.port = _free_port()
        command = re.sub(r"--port \d+", "", command.split("#")[0]).replace("--host 0.0.0.0", "")
        # Its own process group: SIGTERM reaches the server, not just the shell that started it.
        self.proc = subprocess.Popen(["bash", "-c", f"{command.strip()} --port {self.port}"], cwd=cwd, env=_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{command} exited: {self.proc.stdout.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"{command} did not start")

    def stop(self) -> str:
        os.killpg(self.proc.pid, signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return out


def test_quickstart_and_serve_examples_as_written(tmp_path):
    quickstart, test_command = _bash_lines("Set up and run")
    assert test_command == "python -m pytest"
    steps = [s.strip() for s in quickstart.split("&&")]
    assert steps[0].startswith("pip install")
    bench = _run(" && ".join(steps[1:]), tmp_path)
    assert "p50" in bench.stdout or "p50" in bench.stderr
    export = tmp_path / "runs" / "quickstart" / "export"
    assert (export / "model.onnx").is_file() and (export / "export_report.json").is_file()

    # The files the serve examples name.
    test_px = np.asarray(Image.open(ROOT / "edgecnn" / "assets" / "cifar10_sample" / "test.webp"))
    Image.fromarray(test_px[:32, :32]).save(tmp_path / "cat.png")
    shutil.copy(FOREIGN / "yolov8_shapes.onnx", tmp_path / "yolov8n.onnx")
    shutil.copy(FOREIGN / "lraspp_shapes.onnx", tmp_path / "unet.onnx")
    (tmp_path / "classes.txt").write_text("background\nred\ngreen\nblue\n")

    lines = _bash_lines("Serve over HTTP")
    serves = [line for line in lines if "edgecnn serve" in line]
    curls = [line for line in lines if line.startswith("curl")]
    assert len(serves) == 4 and len(curls) == 2
    server = _Server(serves[0], tmp_path)  # the packaged reference model
    try:
        for curl in curls:
            out = _run(curl.replace("localhost:8000", f"127.0.0.1:{server.port}") + " --fail-with-body -sS", tmp_path)
            assert '"top_k"' in out.stdout and '"label"' in out.stdout, out.stdout
    finally:
        server.stop()
    expected = {"runs/quickstart/export/": ("200", ("model", "classify")),
                "yolov8n.onnx": ("401", None),  # the token is random: a client without it is refused
                "unet.onnx": ("200", ("unet", "segment"))}
    for line in serves[1:]:
        (status, text), = [v for k, v in expected.items() if k in line]
        server = _Server(line, tmp_path)
        try:
            r = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", f"127.0.0.1:{server.port}/v1/models"],
                               capture_output=True, text=True, timeout=30)
            body, code = r.stdout.rsplit("\n", 1)
            assert code == status, (line, r.stdout)
            if text is not None:
                import json

                served = {(m["name"], m["task"]) for m in json.loads(body)["models"]}
                assert text in served, (line, served)
        finally:
            server.stop()


def test_python_examples_as_written(tmp_path, monkeypatch):
    """Every ```python block of the README, run with the files and variables it names made real:
    the packaged model under the paths it uses, CIFAR test images as cat.jpg/dog.png/a.jpg, the
    ultralytics detector as any.onnx, a served reference model for the Triton client."""
    from edgecnn.runtime import default_model_path

    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 3
    models = default_model_path().parent
    (tmp_path / "runs" / "seed" / "export").mkdir(parents=True)
    shutil.copy(models / "seed_cnn_cifar10.int8.onnx", tmp_path / "runs" / "seed" / "export" / "model.int8.onnx")
    shutil.copy(models / "seed_cnn_cifar10.onnx", tmp_path / "runs" / "seed" / "export" / "model.onnx")
    shutil.copy(models / "seed_cnn_cifar10.int8.onnx", tmp_path / "model.int8.onnx")
    shutil.copy(FOREIGN / "yolov8_shapes.onnx", tmp_path / "any.onnx")
    test_px = np.asarray(Image.open(ROOT / "edgecnn" / "assets" / "cifar10_sample" / "test.webp"))
    for k, name in enumerate(("cat.jpg", "dog.png", "a.jpg", "street.jpg")):
        Image.fromarray(test_px[:32, 32 * k:32 * (k + 1)]).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace = {"uint8_batch": test_px[:32, :128].reshape(32, 4, 32, 3).transpose(1, 0, 2, 3).copy(),
                 "frame_bytes": (tmp_path / "dog.png").read_bytes()}
    exec(compile(blocks[0], "README block 1", "exec"), dict(namespace))
    exec(compile(blocks[2], "README block 3", "exec"), dict(namespace))
    pytest.importorskip("tritonclient.http")
    server = _Server("edgecnn serve", tmp_path)
    try:
        code = blocks[1].replace("localhost:8000", f"127.0.0.1:{server.port}")
        exec(compile(code, "README block 2", "exec"), {})
    finally:
        server.stop()


def test_batch_examples_as_written(tmp_path):
    """The README's `edgecnn batch` lines, with the folders they name filled with CIFAR test images;
    every line leaves one row per image, and --resume after a finished job writes nothing again."""
    pytest.importorskip("ray")
    import pyarrow.parquet as pq

    from edgecnn.runtime import default_model_path

    models = default_model_path().parent
    (tmp_path / "runs" / "seed" / "export").mkdir(parents=True)
    shutil.copy(models / "seed_cnn_cifar10.onnx", tmp_path / "runs" / "seed" / "export" / "model.onnx")
    shutil.copy(models / "seed_cnn_cifar10.onnx", tmp_path / "model.onnx")
    test_px = np.asarray(Image.open(ROOT / "edgecnn" / "assets" / "cifar10_sample" / "test.webp"))
    for folder, ext in (("photos", "png"), ("archive/2026/11", "jpg"), ("frames", "png")):
        (tmp_path / folder).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(test_px[:32, 32 * k:32 * (k + 1)]).save(tmp_path / folder / f"{k}.{ext}")
    lines = _bash_lines("Batch inference over many images")
    assert len(lines) == 4
    for line in lines:
        result = _run(line.split("  #")[0], tmp_path)
        out = tmp_path / line.split("--out ")[1].split()[0]
        assert len(pq.read_table(out)) == 6, (line, result.stdout)
    assert '"images": 0' in _run(lines[2].split("  #")[0], tmp_path).stdout  # resumed a finished job


def test_segmentation_and_detection_examples_as_written(tmp_path):
    """The README's segment/detect lines, as written but for 1 epoch each and a small scene set, with
    photos/ holding real images: every line succeeds and writes what it says."""
    import json

    (tmp_path / "photos").mkdir()
    shutil.copy(ROOT / "edgecnn" / "assets" / "cifar10_sample" / "test.webp", tmp_path / "photos" / "cifar.webp")
    lines = _bash_lines("Segmentation and detection")
    assert len(lines) == 6
    for line in lines:
        command = re.sub(r"--epochs \d+", "--epochs 1", line.split("  #")[0])
        if "synthetic_scenes" in command:
            command += " --train 48 --val 8 --test 8"
        _run(command, tmp_path)
    assert json.loads((tmp_path / "runs" / "unet" / "card.json").read_text())["task"] == "segment"
    assert json.loads((tmp_path / "runs" / "det" / "card.json").read_text())["task"] == "detect"
    assert (tmp_path / "runs" / "det" / "evaluation.json").is_file()
    assert (tmp_path / "runs" / "det" / "export" / "model.int8.onnx").is_file()
    assert [p.suffix for p in (tmp_path / "boxes").iterdir()] == [".png"]
