"""The export folder: one export at a time, a staging folder inside it, and the move into place.

Every file of an export is written to a staging folder inside the output folder and moved into
place only after it passed verification, so an interrupted or failed export leaves no model file
that looks valid (and no empty folder it created).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgecnn.errors import ConfigError
from edgecnn.export.report import REPORT_JSON, REPORT_MARKDOWN, VariantResult
from edgecnn.runtime.deploy import DEPLOY_FILE, TUNE_REPORT

log = logging.getLogger(__name__)

__all__ = ["staging_folder", "commit"]

_MODEL_FILE = re.compile(r"^model(\.[A-Za-z0-9_-]+)*\.(onnx|tflite)$")


@contextlib.contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A fresh staging folder inside ``out_dir`` (created if needed), with the folder locked.

    The staging folders of killed exports are removed first. On exit the staging folder goes, and
    so does ``out_dir`` when this created it and nothing was written into it.

    Raises:
        ConfigError: while another export holds the folder.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir):
        _sweep_staging(out_dir)
        # The pid in the name lets a later export tell a killed run's leftovers from a running one.
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".export-staging-{os.getpid()}-"))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failure before anything was written leaves no empty folder behind


@contextlib.contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """One export at a time into a folder: an exclusive ``flock`` on the folder itself (released by
    the kernel when the process dies, so a killed export never leaves it locked).

    Raises:
        ConfigError: while another export holds the folder.
    """
    import fcntl

    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"Another edgecnn export is writing {out_dir}; wait for it to finish, or pass "
                              "another --out.") from None
        yield
    finally:
        os.close(fd)


def _sweep_staging(out_dir: Path) -> None:
    """Remove the staging folders of exports that were killed (their process is gone)."""
    for folder in out_dir.glob(".export-staging-*"):
        pid = folder.name.removeprefix(".export-staging-").split("-", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("Removed %s, left by an interrupted export.", folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def commit(out_dir: Path, staging: Path, variants: list[VariantResult],
           also: Sequence[str] = ()) -> list[VariantResult]:
    """Move the verified files of ``variants`` (and the verified files named in ``also``: the
    self-contained ones) from ``staging`` into ``out_dir``; returns the variants with ``file=None``
    for those that failed (their files stay behind and go with the staging folder).

    Everything that describes the folder's earlier files goes first (its report, tune's results,
    the earlier model files): a kill at any instant leaves some of this export's files, never a
    mix with an earlier one's (the caller writes the new report last).
    """
    for name in (REPORT_JSON, REPORT_MARKDOWN):
        (out_dir / name).unlink(missing_ok=True)
    verified = [v.file for v in variants if v.passed and v.file] + list(also)
    _remove_stale_models(out_dir, set(verified))
    for name in verified:  # only verified files leave the staging folder
        os.replace(staging / name, out_dir / name)
    return [v if v.passed else dataclasses.replace(v, file=None) for v in variants]


def _remove_stale_models(out_dir: Path, keep: set[str]) -> None:
    """Model files of an earlier export into the same folder (a runA ``model.int8.onnx`` must not sit
    beside runB's ``model.onnx`` as if it were runB's), and the earlier ``edgecnn tune`` results,
    which measured the replaced files. Files this export writes again (``keep``) are replaced silently."""
    for path in out_dir.iterdir():
        if path.is_file() and _MODEL_FILE.match(path.name):
            path.unlink(missing_ok=True)
            if path.name not in keep:
                log.warning("Removed %s: an earlier export's file, not produced by this one.", path)
    for name in (DEPLOY_FILE, TUNE_REPORT):  # measured on the files this export replaced
        if (out_dir / name).is_file():
            (out_dir / name).unlink(missing_ok=True)
            log.warning("Removed %s: it was tuned on the earlier export; run `edgecnn tune %s` again.",
                        out_dir / name, out_dir)
