"""Batches a model accepts: fixed-batch chunks with the last one padded, and the image axis of each output.

:class:`~edgecnn.runtime.core.InferenceModel` runs every call through :func:`run_chunked` and
finds, once per model, which axis of each output indexes the images (:func:`find_batch_axes`):
axis 0 for most models, axis 1 for a time-major ``[T, N, C]`` sequence, none for an output that is
the same for every image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["run_chunked", "find_batch_axes", "take_images", "output_summary"]

Run = Callable[[np.ndarray], list[np.ndarray]]


def take_images(output: np.ndarray, index: int | slice, axis: int) -> np.ndarray:
    """``output[index]`` along its image ``axis`` (see :meth:`InferenceModel.batch_axes`)."""
    return output[(slice(None),) * axis + (index,)]


def run_chunked(run: Run, x: np.ndarray, step: int | None,
                batch_axes: Callable[[Sequence[np.ndarray], int], list[int | None]]) -> list[np.ndarray]:
    """``run(x)``, for a model of fixed batch ``step`` in chunks of that size: the last one padded
    by repeating the last input, each output cut back to the images asked for and joined along its
    image axis (``batch_axes(outputs, step)``; an output without one is the first chunk's)."""
    if step is None or x.shape[0] == step:
        return run(x)
    parts: list[list[np.ndarray]] = []
    axes: list[int | None] = []
    for start in range(0, x.shape[0], step):
        chunk = x[start:start + step]
        n = chunk.shape[0]
        if n < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
        outs = run(chunk)
        axes = batch_axes(outs, step)
        parts.append([o if a is None else take_images(o, slice(0, n), a) for o, a in zip(outs, axes)])
    return [parts[0][i] if a is None else np.concatenate([p[i] for p in parts], axis=a)
            for i, a in enumerate(axes)]


def find_batch_axes(outputs: Sequence[np.ndarray], n: int, *, graph_outputs: Sequence[Any], input_batch: Any,
                    card_axis: int | None, model_name: str) -> list[int | None]:
    """The axis of each output that indexes the ``n`` images of the batch (None: an output
    without one, the same for every image).

    The card's ``batch_axis`` (``card_axis``) when given; else the axis whose symbolic size is the
    input's batch (``input_batch``, the input's first dimension) in the graph; else this run
    decides: axis 0 when its size is the batch, or the one axis that has the batch's size (a
    time-major ``[T, N, C]`` output: axis 1, said in the log).
    """
    axes: list[int | None] = []
    for out, info in zip(outputs, graph_outputs):
        shape = tuple(np.shape(out))
        declared = [j for j, d in enumerate(info.shape) if isinstance(input_batch, str) and d == input_batch]
        if card_axis is not None:
            axes.append(card_axis if len(shape) > card_axis else None)
        elif len(declared) == 1 and len(shape) == len(info.shape):
            axes.append(declared[0])
        elif shape and shape[0] == n:
            axes.append(0)
        else:
            fits = [j for j, d in enumerate(shape) if d == n]
            axes.append(fits[0] if len(fits) == 1 else None)
            if len(fits) == 1:
                log.info("%s: output %s %s has the images along axis %d (time-major); pass --batch-axis %d to "
                         "say so.", model_name, info.name, list(shape), fits[0], fits[0])
    return axes


def output_summary(name: str, value: np.ndarray) -> dict[str, Any]:
    """One output of one image as a raw model's result: name, shape, dtype and, for numbers, the
    min, max, mean and the index of the largest value."""
    v = np.asarray(value)
    out: dict[str, Any] = {"name": name, "shape": list(v.shape), "dtype": str(v.dtype)}
    if v.size and np.issubdtype(v.dtype, np.number):
        f = v.astype(np.float64)
        out.update(min=float(f.min()), max=float(f.max()), mean=float(f.mean()),
                   argmax=[int(i) for i in np.unravel_index(int(f.argmax()), v.shape)])
    return out
