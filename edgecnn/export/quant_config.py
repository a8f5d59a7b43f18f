"""Quantization settings as types: one config type per mode, as onnxruntime's own
``quantization/quantize.py`` has (``StaticQuantConfig``, ``DynamicQuantConfig``), and
:class:`QuantizeConfig`, the export's options the user sets once for every mode.

:func:`edgecnn.export.quantize.quantize_model` takes one of :data:`ModeConfig` and dispatches on
its type; each type holds only the settings its mode uses and describes itself for the report and
the card. Stdlib only: the variant table (:mod:`edgecnn.export.variants`) names each row's type,
and the CLI reads the choice lists from here for ``--help``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from edgecnn.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["QuantizeConfig", "StaticInt8Config", "DynamicInt8Config", "Fp16Config", "ModeConfig",
           "CALIBRATION_METHODS", "CPU_TARGETS", "CPU_TARGET_CHOICES", "MIN_CALIBRATION_IMAGES"]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CPU_TARGETS = ("avx2", "vnni", "arm64")
CPU_TARGET_CHOICES = ("auto", *CPU_TARGETS)  # auto: this machine's (edgecnn.runtime.cpu.int8_target)
MIN_CALIBRATION_IMAGES = 16
_INT_TYPES = ("uint8", "int8")


@dataclass(frozen=True, kw_only=True)
class _Int8Weights:
    """What both int8 modes store: int8 weights, per output channel or per tensor, 7-bit on AVX2
    without VNNI (``reduce_range``), and the nodes kept in float."""

    per_channel: bool = True
    reduce_range: bool = True
    weight_type: str = "int8"
    target: str = "avx2"
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.weight_type not in _INT_TYPES:
            raise ConfigError(f"weight_type must be uint8 or int8, got {self.weight_type!r}.")
        if self.target not in CPU_TARGETS:
            raise ConfigError(f"target must be one of {CPU_TARGETS}, got {self.target!r}.")

    def _weights(self) -> dict[str, Any]:
        return {"per_channel": self.per_channel, "reduce_range": self.reduce_range, "weight_type": self.weight_type,
                "target": self.target}


@dataclass(frozen=True, kw_only=True)
class StaticInt8Config(_Int8Weights):
    """Static int8 (QDQ): activations quantized with ranges calibrated on real images.

    ``exclude_op_types`` keeps every node of those types in float (by default the final Softmax,
    so probabilities keep full resolution); ``op_types`` limits quantization to those op types
    (None: every op onnxruntime can quantize).
    """

    mode: ClassVar[str] = "int8"
    calibration_method: str = "minmax"
    calibration_samples: int = 512
    activation_type: str = "uint8"
    exclude_op_types: tuple[str, ...] = ("Softmax",)
    op_types: tuple[str, ...] | None = None
    percentile: float = 99.999
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration_method must be one of {CALIBRATION_METHODS}, "
                              f"got {self.calibration_method!r}.")
        if self.calibration_samples < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"calibration_samples must be >= {MIN_CALIBRATION_IMAGES}, "
                              f"got {self.calibration_samples}.")
        if self.activation_type not in _INT_TYPES:
            raise ConfigError(f"activation_type must be uint8 or int8, got {self.activation_type!r}.")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in [90, 100], got {self.percentile}.")

    def describe(self) -> dict[str, Any]:
        """The settings, for the report and the card."""
        out = {**self._weights(), "format": "QDQ", "activation_type": self.activation_type,
               "calibration_method": self.calibration_method, "calibration_samples": self.calibration_samples,
               "exclude_nodes": list(self.exclude_nodes), "exclude_op_types": list(self.exclude_op_types),
               "op_types": None if self.op_types is None else list(self.op_types)}
        if self.calibration_method == "percentile":
            out["percentile"] = self.percentile
        return out


@dataclass(frozen=True, kw_only=True)
class DynamicInt8Config(_Int8Weights):
    """Dynamic int8: int8 weights, activations quantized per call (convolutions and matrix products)."""

    mode: ClassVar[str] = "int8-dynamic"

    def describe(self) -> dict[str, Any]:
        """The settings, for the report and the card."""
        return self._weights()


@dataclass(frozen=True, kw_only=True)
class Fp16Config:
    """float16 weights and activations; ``keep_io_float32``: the inputs and outputs stay float32."""

    mode: ClassVar[str] = "fp16"
    keep_io_float32: bool = True

    def describe(self) -> dict[str, Any]:
        """The settings, for the report and the card."""
        return {"keep_io_float32": self.keep_io_float32}


ModeConfig = StaticInt8Config | DynamicInt8Config | Fp16Config


@dataclass(frozen=True)
class QuantizeConfig:
    """The export's quantization options, set once for every mode (the CLI's flags); build presets
    with :meth:`for_target`, and the config of one mode with :meth:`for_mode`.

    ``exclude_nodes`` keeps named nodes in float; ``exclude_op_types`` keeps every node of those
    types in float (by default the final Softmax, so probabilities keep full resolution).
    ``op_types`` limits static int8 to those op types (None: every op onnxruntime can quantize).
    Detectors quantize convolutions and matrix products only (:meth:`for_task`): a YOLO head
    concatenates box coordinates (0 to the image size) with class scores (0 to 1) into one tensor,
    and one uint8 scale for both wipes the scores out (measured on the ultralytics YOLOv8 of
    tests/data/foreign: mAP@0.5 against fp32 0.00 with every op quantized, 0.998 with
    convolutions only; keeping the decode tail's convolutions in float as well changed nothing).
    """

    calibration_method: str = "minmax"
    calibration_samples: int = 512
    per_channel: bool = True
    reduce_range: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ("Softmax",)
    op_types: tuple[str, ...] | None = None
    percentile: float = 99.999
    fp16_keep_io_float32: bool = True
    seed: int = 0
    target: str = "avx2"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _pick(StaticInt8Config, self)  # the int8 modes' own checks, when the options are set

    @classmethod
    def for_target(cls, target: str = "avx2", **overrides: Any) -> QuantizeConfig:
        """U8S8 for every target; 7-bit weights (``reduce_range``) only for AVX2 without VNNI.

        The numbers behind this choice (against S8S8, per target) are in docs/benchmarks.md,
        "S8S8 vs U8S8" (:mod:`edgecnn.export.quantize` for the summary). ``auto`` is the exporting
        machine's own: VNNI or AMX -> ``vnni``, ARM64 -> ``arm64``, else ``avx2`` (the card records
        the target, and the runtime warns when a ``vnni`` file runs on a CPU without VNNI).
        """
        if target == "auto":
            from edgecnn.runtime.cpu import int8_target

            target = int8_target()
            log.debug("int8 for this machine's CPU: --cpu-target %s.", target)
        if target not in CPU_TARGETS:
            raise ConfigError(f"Unknown CPU target {target!r}; choose one of {', '.join(CPU_TARGET_CHOICES)}.")
        return cls(**{"target": target, "activation_type": "uint8", "weight_type": "int8",
                      "reduce_range": target == "avx2", **overrides})

    def for_task(self, task: str) -> QuantizeConfig:
        """These options with the defaults a task needs: detectors quantize convolutions and matrix
        products only (unless op types were chosen already)."""
        if task == "detect" and self.op_types is None:
            return replace(self, op_types=("Conv", "MatMul", "Gemm"))
        return self

    # ------------------------------------------------------------------------- one mode's config
    def for_mode(self, mode: str, *, task: str | None = None) -> ModeConfig:
        """The config of ``mode`` (``int8``, ``int8-dynamic``, ``fp16``: the variant table's
        ``quantize_config`` type) from these options, with ``task``'s defaults (:meth:`for_task`).

        Raises:
            ConfigError: for a mode onnxruntime.quantization does not make.
        """
        from edgecnn.export.variants import VARIANTS

        kind = VARIANTS[mode].quantize_config if mode in VARIANTS else None
        if kind is None:
            modes = ", ".join(n for n, v in VARIANTS.items() if v.quantize_config is not None)
            raise ConfigError(f"Unknown quantization mode {mode!r}; choose from {modes}.")
        options = self.for_task(task) if task else self
        if kind is StaticInt8Config or kind is DynamicInt8Config:
            return _pick(kind, options)
        return Fp16Config(keep_io_float32=options.fp16_keep_io_float32)

    def static_int8(self, *, task: str | None = None) -> StaticInt8Config:
        """:meth:`for_mode` of ``int8``, typed (what accuracy-aware int8 searches over)."""
        return _pick(StaticInt8Config, self.for_task(task) if task else self)


def _pick(kind: type[StaticInt8Config] | type[DynamicInt8Config], options: QuantizeConfig) -> Any:
    """``kind`` built from the options it has a field for."""
    return kind(**{k: v for k, v in asdict(options).items() if k in kind.__dataclass_fields__})
