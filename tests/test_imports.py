"""The arrows between stages: import-linter's contracts (pyproject.toml) and what really loads.

Subprocesses, because pytest's ``sys.modules`` is shared between tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
needs_linter = pytest.mark.skipif(LINT_IMPORTS is None, reason="needs import-linter (pip install 'edgecnn[dev]')")
HEAVY = "{'tensorflow', 'keras', 'tf2onnx'}"


def _loaded(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; print(sorted({HEAVY} & set(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip().splitlines()[-1]


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], capture_output=True, text=True, cwd=cwd, env=env)


@needs_linter
def test_import_contracts_are_kept():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@needs_linter
def test_contracts_catch_a_function_level_import_running_backwards(tmp_path):
    """The contract is not vacuous: runtime -> train inside a function body breaks it."""
    shutil.copytree(ROOT / "edgecnn", tmp_path / "edgecnn", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "edgecnn" / "runtime" / "benchmark.py", "a", encoding="utf-8") as fh:
        fh.write("\n\ndef _backwards():\n    from edgecnn.train.registry import list_models\n\n"
                 "    return list_models()\n")
    res = _lint_imports(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert res.returncode != 0
    assert "edgecnn.runtime.benchmark -> edgecnn.train.registry" in res.stdout


def test_runtime_and_serve_load_no_tensorflow():
    assert _loaded("import edgecnn.runtime, edgecnn.serve, edgecnn.runtime.benchmark") == "[]"


def test_train_config_and_registry_lookups_load_no_tensorflow():
    code = ("import edgecnn.train, edgecnn.train.config; "
            "from edgecnn.train.registry import get_model_spec, list_models; "
            "[get_model_spec(n) for n in list_models()]; from edgecnn.train.transfer import BACKBONES")
    assert _loaded(code) == "[]"


def test_baselines_and_litert_modules_load_no_tensorflow_until_used():
    assert _loaded("import edgecnn.baselines, edgecnn.export.litert") == "[]"


def test_tune_loads_no_tensorflow():
    """tune's modules, and the export helpers it runs (the report, the metrics, the held-out
    images of pipeline.load_test_data), load no TensorFlow: import-linter's tune contract lets
    the export package's function-level Keras imports pass, this checks what really loads."""
    code = ("import edgecnn.tune.tuner; from edgecnn.card import ModelCard; from edgecnn.datasets import load_dataset; "
            "from edgecnn.export.pipeline import load_test_data; ds = load_dataset('sample', classes='0-2'); "
            "load_test_data(ModelCard(name='t', class_names=ds.class_names, input_size=(32, 32), "
            "dataset=ds.describe()), limit=8)")
    assert _loaded(code) == "[]"


def test_tune_options_load_neither_numpy_nor_the_runtime():
    """The CLI builds ``edgecnn tune --help`` from edgecnn.tune.config: it must stay cheap."""
    out = subprocess.run([sys.executable, "-c", "import sys, edgecnn.tune; from edgecnn.tune import OBJECTIVES, "
                          "TuneConfig; print(sorted({'numpy', 'onnxruntime', 'edgecnn.runtime'} & set(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"
