"""tools/attack_serve.py --short against a real `edgecnn serve` process: every attack of issue 11
while a legitimate client works. Throughput is a benchmark (docs/benchmarks.md), not asserted here;
what must hold: no 5xx for anyone, no error for the legitimate client, the right 4xx per attack."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("attack_serve", ROOT / "tools" / "attack_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attacks_hurt_no_one_else():
    tool = _tool()
    out = tool.run(1.5, True, ["--body-timeout", "1", "--header-timeout", "1"])
    assert out["server_alive"] and out["baseline"]["ok"] > 0
    by_name = {r["attack"]: r for r in out["attacks"]}
    for row in out["attacks"]:
        assert row["attacker_5xx"] == 0, row
        assert not row["legit_errors"], row
        assert row["legit_rps"] > 0, row
    assert set(by_name["poison and mutated images"]["attacker_codes"]) <= {"200", "400", "413", "415"}
    assert "400" in by_name["poison and mutated images"]["attacker_codes"]
    assert set(by_name["header flood"]["attacker_codes"]) <= {"431", "0"}
    assert set(by_name["slow bodies"]["attacker_codes"]) == {"408"}
    assert set(by_name["upload burst"]["attacker_codes"]) <= {"400", "413"}


def test_hostile_inputs_are_distinct():
    inputs = _tool().hostile_inputs(160)
    assert len({body for _, body in inputs}) == 160
