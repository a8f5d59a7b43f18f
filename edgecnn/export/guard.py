"""The accuracy guard's verdict: what a quantized variant lost, with the uncertainty of the images
it was judged on.

A variant is judged against the fp32 model on the same held-out images, by the task's own measure:

- classify, labelled: the accuracy drop (fp32 minus variant, percentage points), with Newcombe's
  interval for a difference of paired proportions (1998, method 10: Wilson score intervals of the
  two accuracies combined through their correlation). Each image is one pair (fp32 right or
  wrong, variant right or wrong), so the interval narrows with the images that *disagree*;
- classify, unlabelled: the *expected* accuracy drop with fp32's own probabilities as the truth:
  each image whose top-1 flipped costs fp32's probability of its own answer minus that of the
  variant's answer (a confident flip costs almost a whole image, a flip between two near-equal
  classes almost nothing: either answer was a coin toss for fp32 too). Top-1 agreement stays the
  reported metric. The interval is Wilson's with the fractional count (conservative for a [0, 1]
  cost, whose variance is at most p(1 - p)). A flip where fp32's top-2 margin is below the
  variant's typical perturbation (the median over images of the largest probability change it
  makes, at most ``NEAR_TIE_CAP``) is reported as a *near-tie*. Overconfident fp32 probabilities
  make the estimate larger, not smaller;
- detect: mAP@0.5 of the variant's boxes against the fp32 boxes; segment: mIoU of its class maps
  against the fp32 ones. The loss ``100 * (1 - metric)`` gets a percentile bootstrap interval over
  the images (``BOOTSTRAP`` resamples, seeded);
- raw (no task head): the signal-to-quantization-noise ratio of every output (dB, fp32 as the
  signal, bootstrapped over images) must reach ``min_sqnr_db``, and where an output's last axis
  is a softmax over a few choices (2..``ARGMAX_AXIS_MAX``), its arg-max choices are judged as an
  unlabelled classifier's (expected cost within the pp budget, bootstrapped over images).

Each check ends in one of three outcomes: ``kept`` (the whole 95% interval is within the budget),
``exceeded`` (the whole interval is outside it) or ``unsure`` (the interval straddles it: the images
cannot tell). ``kept`` passes and ``exceeded`` fails; ``unsure`` passes with a note naming what would
settle it under the default ``lenient`` policy, and fails under ``strict``. When a variant fails,
:func:`guard_hints` names the flags that could help.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.export.variants import DEFAULT_MIN_SQNR_DB
from edgecnn.export.verify import cosine_similarity, task_evidence

if TYPE_CHECKING:
    from edgecnn.export.quant_config import QuantizeConfig

__all__ = ["Check", "Verdict", "judge_variant", "guard_hints", "wilson",
           "paired_drop_interval", "near_tie_threshold", "Z95"]

Z95 = 1.959963984540054  # two-sided 95%
BOOTSTRAP = 400
NEAR_TIE_CAP = 0.05  # a top-2 margin above 5 points of probability is no tie, whatever the noise
ARGMAX_AXIS_MAX = 32
_OUTCOMES = ("kept", "unsure", "exceeded")


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (0-1); (0, 1) for ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (0.0 if k <= 0 else max(0.0, mid - half)), (1.0 if k >= n else min(1.0, mid + half))


def paired_drop_interval(ref_right: np.ndarray, var_right: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Accuracy drop ``p_ref - p_var`` of two models judged on the same images, with Newcombe's
    (1998) method-10 interval for paired proportions. Fractions (0-1).

    ``ref_right``/``var_right`` are per-image booleans (the model's top-1 is the label).
    """
    r, v = np.asarray(ref_right, bool), np.asarray(var_right, bool)
    n = len(r)
    a, b = int(np.sum(r & v)), int(np.sum(r & ~v))
    c, d = int(np.sum(~r & v)), int(np.sum(~r & ~v))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    den = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(den) if den > 0 else 0.0
    delta = p1 - p2
    low = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = delta + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return delta, max(-1.0, low), min(1.0, high)


def _probabilities(x: np.ndarray, kind: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if kind == "probabilities" and x.min(initial=0) >= -1e-6 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return x
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def near_tie_threshold(ref_p: np.ndarray, var_p: np.ndarray) -> float:
    """The variant's typical perturbation: the median over images of the largest probability change
    it makes, capped at ``NEAR_TIE_CAP``."""
    change = np.abs(ref_p - var_p).max(axis=1)
    return float(min(NEAR_TIE_CAP, np.median(change))) if len(change) else 0.0


@dataclass(frozen=True)
class Check:
    """One quantity of the verdict: an estimate, its 95% interval and the limit it is held to.

    For a loss (``higher_is_better`` False) the limit is a maximum, for a quality (SQNR) a minimum.
    """

    name: str  # e.g. "accuracy drop", "top-1 disagreement", "mAP@0.5 loss", "SQNR of output 'scores'"
    unit: str  # "pp" or "dB"
    estimate: float
    low: float
    high: float
    limit: float
    higher_is_better: bool = False
    interval: str = ""  # how the interval was made
    detail: str = ""  # e.g. "4 flips, 3 of them near-ties"

    @property
    def outcome(self) -> str:
        eps = 1e-9
        if self.higher_is_better:
            return "kept" if self.low >= self.limit - eps else "exceeded" if self.high < self.limit - eps else "unsure"
        return "kept" if self.high <= self.limit + eps else "exceeded" if self.low > self.limit + eps else "unsure"

    def text(self) -> str:
        bound = "at least" if self.higher_is_better else "at most"
        words = {"kept": "within", "exceeded": "outside", "unsure": "straddling"}[self.outcome]
        detail = f" ({self.detail})" if self.detail else ""
        return (f"{self.name} {self.value_text()}{detail}, 95% interval {self.interval_text()} {words} the limit of "
                f"{bound} {self.limit:g} {self.unit}")

    def value_text(self) -> str:
        return f"{self.estimate:.1f} dB" if self.unit == "dB" else f"{self.estimate:+.2f} {self.unit}"

    def interval_text(self) -> str:
        if self.unit == "dB":
            return f"[{self.low:.1f}, {self.high:.1f}]"
        return f"[{self.low:+.2f}, {self.high:+.2f}]"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(**{k: v for k, v in d.items() if k != "outcome"})


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one variant: every check, the overall outcome, pass or fail."""

    checks: tuple[Check, ...]
    images: int
    policy: str = "lenient"
    settle: str = ""  # what would settle an unsure verdict

    @property
    def outcome(self) -> str:
        if not self.checks:
            return "kept"
        return max((c.outcome for c in self.checks), key=_OUTCOMES.index)

    @property
    def passed(self) -> bool:
        return self.outcome == "kept" or (self.outcome == "unsure" and self.policy == "lenient")

    def text(self) -> str:
        """One line: every check, then what the outcome means."""
        shown = [c for c in self.checks if c.outcome == self.outcome] if self.outcome != "kept" else self.checks
        parts = "; ".join(c.text() for c in shown)
        if len(shown) < len(self.checks):
            parts += f" ({len(shown)} of {len(self.checks)} checks; every one is in the report)"
        if self.outcome == "kept":
            return f"{parts}: kept on {self.images} images"
        if self.outcome == "exceeded":
            return f"{parts}: exceeded on {self.images} images"
        verb = "passed (--guard lenient)" if self.policy == "lenient" else "refused (--guard strict)"
        return f"{parts}: {self.images} images cannot tell, {verb}; {self.settle}"

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "passed": self.passed, "policy": self.policy, "images": self.images,
                "settle": self.settle, "checks": [c.to_dict() for c in self.checks]}


# ----------------------------------------------------------------------------------- judging


def judge_variant(task: str, ref_out: Sequence[np.ndarray], var_out: Sequence[np.ndarray], card: ModelCard, *,
                  labels: np.ndarray | None, budget_pp: float, min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
                  policy: str = "lenient", seed: int = 0) -> Verdict:
    """The verdict on a variant whose outputs on the held-out images are ``var_out``, against the
    fp32 outputs ``ref_out`` (labels: the images' classes, classifiers only)."""
    n = int(len(ref_out[0]))
    settle = ("more held-out images would settle it (a larger --calibration-data, or labelled --eval-data); "
              "--guard strict refuses such a variant")
    rng = np.random.default_rng(seed)
    if task == "classify" and labels is not None:
        checks: tuple[Check, ...] = (_accuracy_drop(ref_out[0], var_out[0], labels, budget_pp),)
    elif task == "classify":
        checks = (_disagreement(ref_out[0], var_out[0], card.output_kind, budget_pp),)
    elif task in ("detect", "segment"):
        checks = (_task_loss(task, ref_out, var_out, card, budget_pp, rng),)
    else:
        checks = _raw_checks(ref_out, var_out, budget_pp, min_sqnr_db, rng)
    return Verdict(checks, n, policy, settle)


def _accuracy_drop(ref: np.ndarray, var: np.ndarray, labels: np.ndarray, budget: float) -> Check:
    y = np.asarray(labels).reshape(-1)
    ref_right, var_right = ref.argmax(axis=1) == y, var.argmax(axis=1) == y
    drop, low, high = paired_drop_interval(ref_right, var_right)
    lost, won = int(np.sum(ref_right & ~var_right)), int(np.sum(~ref_right & var_right))
    return Check("accuracy drop", "pp", 100 * drop, 100 * low, 100 * high, budget, interval="Newcombe paired",
                 detail=f"{lost} image(s) lost, {won} gained")


def _disagreement(ref: np.ndarray, var: np.ndarray, kind: str, budget: float) -> Check:
    n = len(ref)
    ref_p, var_p = _probabilities(ref, kind), _probabilities(var, kind)
    flips, cost, ties, tie = _flip_costs(ref_p, var_p)
    low, high = wilson(float(cost.sum()), n)
    detail = (f"top-1 agreement {100 * (1 - flips.mean()):.2f}%: {int(flips.sum())} flip(s) costing "
              f"{float(cost.sum()):.2f} image(s) by fp32's own probabilities, {ties} of them near-ties "
              f"(fp32 top-2 margin < {tie:.3f})")
    return Check("expected accuracy drop", "pp", 100 * float(cost.mean()), 100 * low, 100 * high, budget,
                 interval="Wilson, fractional", detail=detail)


def _flip_costs(ref_p: np.ndarray, var_p: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Which rows flipped, what each costs in expected accuracy with fp32's probabilities as the
    truth (fp32's probability of its own answer minus that of the variant's answer: a near-tie
    costs almost nothing, a confident flip almost a whole image), the near-tie count, and the
    near-tie threshold."""
    top_ref, top_var = ref_p.argmax(axis=1), var_p.argmax(axis=1)
    flips = top_ref != top_var
    rows = np.arange(len(ref_p))
    cost = np.where(flips, ref_p[rows, top_ref] - ref_p[rows, top_var], 0.0)
    ordered = np.sort(ref_p, axis=1)
    margin = ordered[:, -1] - ordered[:, -2] if ref_p.shape[1] > 1 else np.ones(len(ref_p))
    tie = near_tie_threshold(ref_p, var_p)
    return flips, cost, int(np.sum(flips & (margin < tie))), tie


def _task_loss(task: str, ref_out: Sequence[np.ndarray], var_out: Sequence[np.ndarray], card: ModelCard,
               budget: float, rng: np.random.Generator) -> Check:
    score, n = task_evidence(task, ref_out, var_out, card)
    point = score(None)
    draws = np.array([score(rng.multinomial(n, np.full(n, 1.0 / n))) for _ in range(BOOTSTRAP)])
    loss, high, low = 100 * (1 - point), 100 * (1 - np.percentile(draws, 2.5)), 100 * (1 - np.percentile(draws, 97.5))
    name = "mAP@0.5 loss against the fp32 boxes" if task == "detect" else "mIoU loss against the fp32 masks"
    what = "mAP@0.5" if task == "detect" else "mIoU"
    return Check(name, "pp", loss, min(low, loss), max(high, loss), budget, interval=f"bootstrap x{BOOTSTRAP}",
                 detail=f"{what} {100 * point:.2f}%")


def _raw_checks(ref_out: Sequence[np.ndarray], var_out: Sequence[np.ndarray], budget: float, min_sqnr: float,
                rng: np.random.Generator) -> tuple[Check, ...]:
    checks = []
    n = len(ref_out[0])
    draws = [rng.multinomial(n, np.full(n, 1.0 / n)) for _ in range(BOOTSTRAP)]
    for k, (ref, var) in enumerate(zip(ref_out, var_out)):
        r = np.asarray(ref, dtype=np.float64).reshape(n, -1)
        v = np.asarray(var, dtype=np.float64).reshape(n, -1)
        signal, noise = (r * r).sum(axis=1), ((r - v) ** 2).sum(axis=1)
        point = _sqnr(signal.sum(), noise.sum())
        boot = np.array([_sqnr(w @ signal, w @ noise) for w in draws])
        name = f"SQNR of output {k}" if len(ref_out) > 1 else "SQNR of the output"
        checks.append(Check(name, "dB", point, min(point, float(np.percentile(boot, 2.5))),
                            max(point, float(np.percentile(boot, 97.5))), min_sqnr, higher_is_better=True,
                            interval=f"bootstrap x{BOOTSTRAP}", detail=f"cosine {cosine_similarity(r, v):.4f}"))
        if _is_distribution(ref):
            checks.append(_choice_disagreement(k, ref, var, budget, draws))
    return tuple(checks)


def _is_distribution(x: np.ndarray) -> bool:
    """A raw output whose last axis is a probability distribution over a few choices (a softmax)."""
    x = np.asarray(x)
    if x.ndim < 2 or not 2 <= x.shape[-1] <= ARGMAX_AXIS_MAX or x.size == 0:
        return False
    return bool(x.min() >= -1e-6 and np.allclose(x.sum(axis=-1), 1.0, atol=1e-3))


def _choice_disagreement(k: int, ref: np.ndarray, var: np.ndarray, budget: float,
                         draws: list[np.ndarray]) -> Check:
    """A softmax output's choices judged as a classifier's without labels (expected accuracy cost of
    each flipped arg-max, fp32's probabilities as the truth), per image, bootstrapped over images."""
    n, c = len(ref), np.shape(ref)[-1]
    r = np.asarray(ref, np.float64).reshape(-1, c)
    v = np.asarray(var, np.float64).reshape(-1, c)
    flips, cost, ties, _ = _flip_costs(r, v)
    per_image = cost.reshape(n, -1).mean(axis=1)
    point = 100 * float(per_image.mean())
    boot = np.array([100 * (w @ per_image) / n for w in draws])
    detail = f"{int(flips.sum())} flip(s) over {len(r)} positions, {ties} of them near-ties"
    return Check(f"expected arg-max cost of output {k} ({c} choices)", "pp", point,
                 min(point, float(np.percentile(boot, 2.5))), max(point, float(np.percentile(boot, 97.5))), budget,
                 interval=f"bootstrap x{BOOTSTRAP}", detail=detail)


_SQNR_IDENTICAL = 200.0  # dB reported for outputs that are bit-identical (no noise at all)


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0:
        return _SQNR_IDENTICAL
    if signal <= 0:
        return -_SQNR_IDENTICAL
    return float(min(_SQNR_IDENTICAL, 10 * math.log10(signal / noise)))


def guard_hints(quant: QuantizeConfig, *, accuracy_aware: bool, int8_failed: bool, task: str = "classify") -> str:
    """What to try after a variant failed the accuracy guard, naming the flags that could help.

    ``--accuracy-aware`` when a static int8 failed without it; the calibration methods not tried;
    ``--cpu-target vnni`` (full 8-bit weights) when the avx2 target's 7-bit weights were used; the
    budget a raw model is held to is ``--min-sqnr`` besides ``--max-accuracy-drop``.
    """
    hints = []
    if int8_failed and not accuracy_aware:
        hints.append("--accuracy-aware (keeps the nodes that quantize worst in float)")
    others = [m for m in ("entropy", "percentile", "minmax") if m != quant.calibration_method]
    hints.append(f"--calibration-method {' or '.join(others)} (used: {quant.calibration_method})")
    if quant.reduce_range:
        hints.append("--cpu-target vnni or arm64 when the target CPU has VNNI or ARM dot-product (8-bit weights "
                     "instead of avx2's 7-bit)")
    budget = "lower --min-sqnr or raise --max-accuracy-drop" if task == "raw" else "raise --max-accuracy-drop"
    hints += ["more --calibration-samples", "--exclude-node for sensitive layers", f"or {budget}"]
    return "Try " + ", ".join(hints) + "."
