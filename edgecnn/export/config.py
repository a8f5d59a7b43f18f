"""The options of one export (:class:`ExportConfig`), validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgecnn.errors import ConfigError
from edgecnn.export.onnx import DEFAULT_OPSET
from edgecnn.export.quant_config import QuantizeConfig
from edgecnn.export.variants import DEFAULT_MIN_SQNR_DB, EXPORT_MODES, EXPORT_TTA, GUARD_POLICIES

if TYPE_CHECKING:
    from edgecnn.export.qat import QATModel

__all__ = ["ExportConfig"]


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Options of one export.

    ``opset``: the ONNX opset of the export (None: 17 for converted models, an ONNX source's own).
    ``layout``: input layout of a model converted from TensorFlow (None: nhwc); an ONNX source
    keeps its own. ``atol`` bounds the fp32 max difference to the source on held-out images,
    relative to each output's largest magnitude (at least 1). ``max_accuracy_drop`` (percentage
    points vs fp32; of top-1 agreement without labels) is the guard for every quantized variant.
    ``check_chance`` fails an export whose fp32 accuracy on labelled data is at chance, when the
    preprocessing came from flags or a guess rather than an edgecnn card.

    Raises:
        ConfigError: for an unknown variant, layout, guard policy or TTA mode, or a value out of range.
    """

    opset: int | None = None
    layout: str | None = None
    quantize: tuple[str, ...] = ()
    simplify: bool = True
    atol: float = 1e-4
    parity_images: int = 512
    test_images: int | None = None  # None: the full held-out test set
    max_accuracy_drop: float = 1.0
    quant: QuantizeConfig = field(default_factory=QuantizeConfig.for_target)
    triton_dir: Path | None = None
    triton_max_batch_size: int = 64
    check_chance: bool = True
    accuracy_aware: bool = False  # int8: keep the worst-quantized nodes in float until the guard passes
    guard: str = "lenient"  # an unsure verdict (the interval straddles the budget) passes, or "strict": fails
    eval_data: Path | None = None  # images that judge every variant (all of them), instead of a held-out part
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB  # raw outputs (no task head): the least SQNR a variant may have
    tta: str = "none"  # "flip": flip test-time augmentation inside the graph (edgecnn.export.tta): 2x the cost
    qat: QATModel | None = None  # the int8 variant is this fine-tuned model (edgecnn.export.qat), not calibrated
    self_contained: bool = False  # each ONNX file also as <file>.self-contained.onnx (edgecnn.export.self_contained)

    def __post_init__(self) -> None:
        unknown = [m for m in self.quantize if m not in EXPORT_MODES]
        if unknown:
            raise ConfigError(f"Unknown quantization mode {unknown[0]!r}; choose from {', '.join(EXPORT_MODES)}.")
        if self.layout not in (None, "nhwc", "nchw"):
            raise ConfigError(f"layout must be 'nhwc' or 'nchw', got {self.layout!r}.")
        if self.opset is not None and not 7 <= self.opset <= 23:
            raise ConfigError(f"opset must be in 7-23 (default {DEFAULT_OPSET}), got {self.opset}.")
        if self.atol <= 0 or self.max_accuracy_drop < 0 or self.parity_images < 2:
            raise ConfigError("atol must be > 0, max_accuracy_drop >= 0 and parity_images >= 2, got "
                              f"{self.atol}, {self.max_accuracy_drop}, {self.parity_images}.")
        if self.guard not in GUARD_POLICIES:
            raise ConfigError(f"guard must be one of {', '.join(GUARD_POLICIES)}, got {self.guard!r}.")
        if not math.isfinite(self.min_sqnr_db):
            raise ConfigError(f"min_sqnr_db must be a finite number of dB, got {self.min_sqnr_db}.")
        if self.tta not in EXPORT_TTA:
            raise ConfigError(f"tta must be one of {', '.join(EXPORT_TTA)}, got {self.tta!r}.")
        object.__setattr__(self, "quantize", tuple(dict.fromkeys(self.quantize)))  # dedupe, keep order
