"""Mixed-precision training: which precision this machine can train in, and Keras's dtype policy
set for the length of one training run.

``fp32`` trains in float32 everywhere. ``bf16`` is Keras's ``mixed_bfloat16``: variables stay
float32, layers compute in bfloat16, the output softmax (see
:func:`edgecnn.train.architectures._common.probabilities`) and the loss stay float32. It needs a
CPU with AVX-512 BF16 or AMX (oneDNN then runs bfloat16 convolutions natively; elsewhere they
are emulated and slower than float32) or an NVIDIA GPU of compute capability 8.0 or newer.
``fp16`` is ``mixed_float16`` with Keras's dynamic loss scaling and needs a GPU: TensorFlow has
no fast float16 convolutions on CPUs. ``auto`` picks fp16 on a GPU, bf16 on a CPU that has
bfloat16 instructions, and fp32 otherwise.

A precision asked for by name that the hardware lacks is a :class:`ConfigError`, never a silent
substitution. The policy is process-global in Keras, so :func:`precision_policy` restores the
previous one when training ends, however it ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from edgecnn.errors import ConfigError
from edgecnn.runtime.cpu import cpu_model_and_flags
from edgecnn.train.config import PRECISIONS

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "POLICIES", "BF16_CPU_FLAGS", "Hardware", "detect_hardware", "resolve_precision",
           "precision_policy"]

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Hardware:
    """What decides the precision: the CPU's flags and the GPUs TensorFlow sees."""

    cpu: str
    flags: frozenset[str]
    gpus: tuple[str, ...] = ()
    gpu_compute_capability: tuple[int, int] | None = None  # of the first GPU

    @property
    def cpu_bf16(self) -> str | None:
        """The flag that gives this CPU native bfloat16 (AMX first), or None."""
        return next((f for f in BF16_CPU_FLAGS if f in self.flags), None)

    @property
    def gpu_bf16(self) -> bool:
        return bool(self.gpus) and (self.gpu_compute_capability or (0, 0)) >= (8, 0)


def detect_hardware() -> Hardware:
    """This machine's CPU flags (``/proc/cpuinfo``) and TensorFlow's GPUs."""
    import tensorflow as tf

    import edgecnn.train._tf  # noqa: F401  (TensorFlow quietly)

    cpu, flags = cpu_model_and_flags()
    gpus = tf.config.list_physical_devices("GPU")
    capability = None
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = tuple(details.get("compute_capability") or ()) or None
    return Hardware(cpu, flags, tuple(g.name for g in gpus), capability)


def resolve_precision(requested: str, hardware: Hardware | None = None) -> tuple[str, str]:
    """The precision to train in for ``requested`` (a :data:`PRECISIONS` value, as
    :class:`TrainConfig` validated it; ``auto`` resolved) and why, in words.

    Raises:
        ConfigError: for a precision asked for by name that the hardware lacks.
    """
    if requested == "fp32":
        return "fp32", "asked for"
    hw = hardware or detect_hardware()
    gpu = f"{len(hw.gpus)} GPU(s)"
    if requested == "auto":
        if hw.gpus:
            return "fp16", f"auto: {gpu}"
        if hw.cpu_bf16:
            return "bf16", f"auto: the CPU has {hw.cpu_bf16}"
        return "fp32", f"auto: no GPU, and the CPU has none of {', '.join(BF16_CPU_FLAGS)}"
    if requested == "fp16":
        if not hw.gpus:
            raise ConfigError("--precision fp16 needs a GPU (TensorFlow has no fast float16 on CPUs) and none is "
                              f"visible; use --precision bf16 on a CPU with {' or '.join(BF16_CPU_FLAGS)}, or fp32.")
        return "fp16", f"asked for, {gpu}"
    if hw.gpu_bf16:
        return "bf16", f"asked for, a GPU of compute capability {'.'.join(map(str, hw.gpu_compute_capability or ()))}"
    if hw.gpus:
        raise ConfigError(f"--precision bf16 needs a GPU of compute capability 8.0 or newer, this one is "
                          f"{'.'.join(map(str, hw.gpu_compute_capability or ('?',)))}; use --precision fp16 or fp32.")
    if not hw.cpu_bf16:
        raise ConfigError(f"--precision bf16 needs a CPU with {' or '.join(BF16_CPU_FLAGS)} ({hw.cpu} has neither: "
                          "bfloat16 would be emulated, slower than float32); use --precision fp32 or auto.")
    return "bf16", f"asked for, the CPU has {hw.cpu_bf16}"


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[str]:
    """Set Keras's global dtype policy for ``precision`` (fp32, bf16, fp16) inside the block and
    restore the previous policy afterwards, also on an error or a KeyboardInterrupt.

    Models built inside the block compute in the policy's dtype, and ``.keras`` files record each
    layer's policy, so a checkpoint loaded later computes as it was trained.
    """
    import keras

    import edgecnn.train._tf  # noqa: F401  (TensorFlow quietly, before keras)

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(POLICIES[precision])
    try:
        yield POLICIES[precision]
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
