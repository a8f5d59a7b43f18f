"""The ``edgecnn serve`` command: options reach the config, no TensorFlow, bad settings fail cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from edgecnn.cli import main
from tests.serve.conftest import RUNTIME_DATA

ROOT = Path(__file__).resolve().parents[2]


def test_serve_help_and_import_load_no_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from edgecnn.cli import main; "
            "r = CliRunner().invoke(main, ['serve', '--help']); assert r.exit_code == 0, r.output; "
            "import edgecnn.serve; "
            "print(sorted({'tensorflow', 'keras', 'tf2onnx', 'onnx'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.fixture()
def captured(monkeypatch):
    calls = []
    monkeypatch.setattr("edgecnn.serve.serve", lambda source, config: calls.append((source, config)))
    return calls


def test_options_reach_the_config(captured, monkeypatch):
    monkeypatch.setenv("EDGECNN_TOKEN", "from-the-environment")
    model = RUNTIME_DATA / "tiny_nhwc.onnx"
    r = CliRunner().invoke(main, ["serve", str(model), "--port", "9001", "--max-batch", "8", "--max-delay-ms", "2",
                                  "--queue-size", "4", "--timeout", "3", "--max-body-mb", "1", "--provider", "cpu"])
    assert r.exit_code == 0, r.output
    source, config = captured[0]
    assert source == model and config.host == "127.0.0.1" and config.port == 9001
    assert (config.max_batch, config.max_delay_ms, config.queue_size, config.timeout_s) == (8, 2.0, 4, 3.0)
    assert config.max_body_bytes == 1024 * 1024 and config.token == "from-the-environment"
    r = CliRunner().invoke(main, ["serve", str(model), "--token", "from-the-flag"])
    assert captured[1][1].token == "from-the-flag"


def test_no_model_serves_the_packaged_default(captured, monkeypatch):
    monkeypatch.delenv("EDGECNN_TOKEN", raising=False)
    r = CliRunner().invoke(main, ["serve"])
    assert r.exit_code == 0 and captured[0][0] is None and captured[0][1].token is None


def test_bad_settings_are_one_line_errors(monkeypatch):
    monkeypatch.delenv("EDGECNN_TOKEN", raising=False)
    r = CliRunner().invoke(main, ["serve", str(RUNTIME_DATA / "tiny_nhwc.onnx"), "--token", "short"])
    assert r.exit_code == 1 and "token must be at least 8" in r.output
    r = CliRunner().invoke(main, ["serve", str(RUNTIME_DATA / "tiny_weights.json")])
    assert r.exit_code == 1 and "Cannot load" in r.output
    r = CliRunner().invoke(main, ["serve", str(RUNTIME_DATA / "tiny_nhwc.onnx"), "--provider", "cuda"])
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert r.exit_code == 1 and "Asked for cuda" in r.output  # no silent CPU fallback


def test_loopback_helper():
    from edgecnn.serve.config import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish():
    """The real command in a subprocess: SIGTERM while a request's body is still arriving."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgecnn.cli", "serve", str(RUNTIME_DATA / "tiny_nhwc.onnx"),
                             "--port", str(port)], cwd=ROOT, env={**os.environ, "EDGECNN_TOKEN": ""},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.1)
        body = json.dumps({"instances": [[[[0.0] * 3] * 8] * 8]}).encode()
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"POST /v1/models/tiny_nhwc:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            conn.sendall(body[100:])
            conn.settimeout(10)
            response = b""
            while b"predictions" not in response and b"error" not in response:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        assert proc.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_share_the_port_and_stop_on_sigterm(tmp_path):
    """--workers 2: two processes answer on one port; SIGTERM to the parent stops them all."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgecnn.cli", "serve", "--workers", "2", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["models"][0]["name"] == \
            "seed_cnn_cifar10"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert all(subprocess.run(["kill", "-0", c], capture_output=True).returncode != 0 for c in children)


def test_a_killed_worker_is_replaced_while_the_others_serve(tmp_path):
    """Issue 21 §1.5: kill -9 of one of two workers stopped the whole server ("exited with status -9
    (its message is above)", with no message above). Now the other keeps answering, a new worker
    takes the dead one's place, one line says so, and SIGTERM still stops them all."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgecnn.cli", "serve", "--workers", "2", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def children() -> list[str]:
        return subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()

    def wait_for(check, seconds: float = 60) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if check():
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    try:
        assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200 and len(children()) == 2)
        first = children()
        os.kill(int(first[0]), signal.SIGKILL)
        answers = [httpx.get(f"{url}/healthz", timeout=5).status_code for _ in range(20)]
        assert answers == [200] * 20 and proc.poll() is None
        assert wait_for(lambda: len(children()) == 2 and first[0] not in children(), 30)
        replacement = next(c for c in children() if c not in first)
        assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200)
        assert replacement
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "edgecnn-worker-0 exited with status -9; the other workers keep serving" in out or \
        "edgecnn-worker-1 exited with status -9; the other workers keep serving" in out, out
    assert "Traceback" not in out


def test_a_failing_worker_is_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    res = subprocess.run([sys.executable, "-m", "edgecnn.cli", "serve", str(bad), "--workers", "2", "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "Cannot load" in res.stderr and "exited with status 1" in res.stderr


def test_a_port_in_use_is_one_line_before_anything_loads():
    """It printed "Ready" (the models loaded) before uvicorn's bind error."""
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "edgecnn.cli", "serve", "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"Cannot listen on 127.0.0.1:{port}" in res.stderr and "Ready" not in res.stderr + res.stdout
