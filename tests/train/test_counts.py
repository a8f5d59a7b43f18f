"""The zoo's counts table (edgecnn/assets/model_counts.json) and `edgecnn models` served from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgecnn.cli import main
from edgecnn.errors import ArtifactError
from edgecnn.train.counts import COUNTS_FILE, CountsKey, ModelCounts, load_counts, measure_counts, model_counts
from edgecnn.train.registry import get_model_spec, list_models


def test_table_covers_every_model_at_its_default_size():
    table = load_counts()
    missing = [n for n in list_models() if CountsKey(n, get_model_spec(n).input_size, 10) not in table]
    assert missing == [], f"not in {COUNTS_FILE.name}; run tools/make_model_counts.py"


@pytest.mark.tf
@pytest.mark.parametrize("key", [k if k.model.endswith("_tiny") else pytest.param(k, marks=pytest.mark.slow)
                                 for k in load_counts()], ids=str)
def test_table_matches_freshly_built_models(key):
    """A changed architecture without a regenerated table fails here: every row is rebuilt and
    counted (all 41 take about 16 s on 2 cores, alexnet_224's 58 M parameters the longest at 1 s);
    the rows of the full-size models are marked slow, so `-m "not slow"` checks the *_tiny ones."""
    assert measure_counts(key) == load_counts()[key]


def test_models_served_from_the_table_imports_no_tensorflow():
    code = ("import sys; from edgecnn.cli import main; main(['models'], standalone_mode=False); "
            "print(sorted({'tensorflow', 'keras', 'tf2onnx'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    seed = load_counts()[CountsKey("seed_cnn", (32, 32), 10)]
    assert f"{seed.params:,}" in out.stdout and seed.params == 122_570  # the tutorial's model.summary() total


@pytest.mark.tf
def test_models_builds_combinations_not_in_the_table():
    key = CountsKey("seed_cnn_tiny", (40, 40), 3, 0.5)
    assert key not in load_counts()
    counts, cached = model_counts(key)
    assert not cached and counts == measure_counts(key)
    r = CliRunner().invoke(main, ["models", "--family", "seed", "--input-size", "40", "--classes", "3",
                                  "--width", "0.5"])
    assert r.exit_code == 0, r.output
    assert "40x40" in r.output and f"{counts.params:,}" in r.output
    assert "Not listed" not in r.output  # seed_cnn_tiny takes a width through **kwargs


@pytest.mark.tf
def test_models_bad_width_or_family_is_one_line():
    r = CliRunner().invoke(main, ["models", "--family", "shufflenet", "--width", "0.3"])
    assert r.exit_code == 1 and "Cannot build shufflenet_v2" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["models", "--family", "transformer"])
    assert r.exit_code == 1 and "choose one of" in r.output and "lenet, mobilenet" in r.output


def test_unreadable_table_names_the_fix(tmp_path):
    bad = tmp_path / "counts.json"
    bad.write_text(json.dumps({"schema": "edgecnn.model_counts/1", "entries": [{"model": "x"}]}))
    with pytest.raises(ArtifactError, match="tools/make_model_counts.py"):
        load_counts(bad)
    assert load_counts(tmp_path / "absent.json") == {}


def test_mflops_are_twice_the_macs():
    assert ModelCounts(params=1, macs=1_500_000).mflops == 3.0
