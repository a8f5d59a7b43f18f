"""edgecnn._files: the one atomic writer every stage uses, and its checksum."""

import hashlib
import os
import stat

import pytest

from edgecnn._files import atomic_path, atomic_write_bytes, atomic_write_text, sha256_file


def test_a_write_replaces_the_file_whole_with_the_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "report.json"
    assert atomic_write_text(path, "old") == path and path.read_text() == "old"
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".keras"  # writers that go by the suffix accept it
        tmp.write_bytes(b"half of a ne")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "m.onnx"
    data = os.urandom(3 << 20)  # more than one 1 MiB block
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
