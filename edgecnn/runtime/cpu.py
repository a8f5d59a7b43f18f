"""What this CPU can do, from ``/proc/cpuinfo`` (stdlib only): the ISA an int8 model is made for.

onnxruntime's U8S8 int8 kernels saturate on x86 CPUs with AVX2 but without VNNI unless weights
use 7 bits (see :mod:`edgecnn.export.quantize`); CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX)
and ARM64 do not. :func:`int8_target` names the export target this machine needs, and
:func:`check_int8_target` warns once when a file made for VNNI runs on a CPU without it.
"""

from __future__ import annotations

import functools
import logging
import platform
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["cpu_model_and_flags", "int8_target", "check_int8_target", "VNNI_FLAGS"]

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    cpu, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu, flags
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    f = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    return (m.group(1).strip() if m else cpu), frozenset(f.group(1).split() if f else ())


def int8_target(flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """``vnni`` (VNNI or AMX: full 8-bit weights), ``arm64``, or ``avx2`` (7-bit weights) for this CPU."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    flags = cpu_model_and_flags()[1] if flags is None else flags
    return "vnni" if any(f in flags for f in VNNI_FLAGS) else "avx2"


_warned: set[str] = set()


def check_int8_target(card: Any, name: str, flags: frozenset[str] | None = None,
                      machine: str | None = None) -> str | None:
    """Warn once per file when an int8 model made for VNNI/ARM (8-bit weights) runs on an x86 CPU
    without VNNI, where onnxruntime's U8S8 kernels can saturate; returns the warning, if any."""
    quant = (card.export or {}).get("quantization") or {}
    made_for = quant.get("target")
    if card.precision != "int8" or made_for not in ("vnni", "arm64") or name in _warned:
        return None
    here = int8_target(flags, machine)
    if here != "avx2":
        return None
    _warned.add(name)
    message = (f"{name} was quantized for {made_for} CPUs (8-bit weights); this CPU has AVX2 without VNNI, where "
               "onnxruntime's int8 kernels can saturate and lose accuracy: re-export it with --cpu-target avx2.")
    log.warning("%s", message)
    return message
