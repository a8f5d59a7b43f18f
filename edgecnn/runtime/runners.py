"""How one call reaches a session: the cheapest way in for one input array.

:class:`Runner` is what :class:`~edgecnn.runtime.core.InferenceModel` calls, once per call: IO
binding with reused device buffers (:class:`DeviceBinder`), else the session's own array call
(:meth:`Session.run_array <edgecnn.runtime.backends.base.Session.run_array>`: no feed dict, nothing
built per call).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecnn.errors import ArtifactError, InputError
from edgecnn.runtime.backends.base import Session, numpy_dtype

__all__ = ["Runner", "DeviceBinder"]


class Runner:
    """One session and the cheapest way to call it with one input array: through IO binding, or the
    session's array call (a model whose image input is not its first gets ``session.run`` with a
    one-entry feed)."""

    def __init__(self, session: Session, input_name: str, binder: DeviceBinder | None) -> None:
        self.session, self.input_name, self.binder = session, input_name, binder
        self.run: Callable[[np.ndarray], list[np.ndarray]]
        if binder is not None:
            # One host-to-device copy into a reused input buffer and one device-to-host copy per
            # output per call, nothing else (see DeviceBinder).
            self.run = binder.run
        elif session.get_inputs()[0].name == input_name:
            self.run = session.run_array
        else:
            run = session.run
            self.run = lambda x: run(None, {input_name: x})


class DeviceBinder:
    """IO binding over input/output buffers allocated on the session's device and reused.

    Per input shape, one input OrtValue and one OrtValue per output are allocated on the device
    and bound once; each call refills the input in place (``update_inplace``: one host-to-device
    copy), runs, and copies the outputs back. CUDA graphs need exactly this: onnxruntime captures
    the kernels with the bound addresses on the first runs and replays them later, so the
    addresses must never change. With ``fixed_shape`` (CUDA graphs) the first shape is the only
    one accepted; otherwise up to ``_MAX_SHAPES`` shapes keep their buffers (the server's
    micro-batches come in a few sizes). Calls are serialized: the buffers are shared.
    """

    _MAX_SHAPES = 8

    def __init__(self, session: ort.InferenceSession, input_name: str, output_names: list[str], *, device: str,
                 device_id: int, fixed_shape: bool) -> None:
        self.session, self.input_name, self.output_names = session, input_name, output_names
        self.device, self.device_id, self.fixed_shape = device, device_id, fixed_shape
        self._outputs = {o.name: (list(o.shape), numpy_dtype(o.type)) for o in session.get_outputs()}
        self._bound: dict[tuple[int, ...], tuple[Any, Any, list[Any]]] = {}
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            entry = self._bound.get(x.shape)
            if entry is None:
                entry = self._bind(x)
            else:
                entry[1].update_inplace(x)
            self.session.run_with_iobinding(entry[0])
            # Copies that own their memory: on the CPU the output buffers are reused by the next call.
            return [np.array(o, copy=True) for o in entry[0].copy_outputs_to_cpu()]

    def timed_call(self, x: np.ndarray) -> Callable[[], Any]:
        """A no-argument call that runs the bound buffers of ``x``'s shape, ``x`` copied in once:
        ``run_with_iobinding`` alone, for a benchmark to time the model without the copies (onnxruntime
        synchronizes the device at the end of each run). Runs once here, which binds the buffers and
        warms the graph up."""
        self.run(x)
        binding, run = self._bound[x.shape][0], self.session.run_with_iobinding
        return lambda: run(binding)

    def _bind(self, x: np.ndarray) -> tuple[Any, Any, list[Any]]:
        if self.fixed_shape and self._bound:
            (captured,) = self._bound
            raise InputError(
                f"This model runs a CUDA graph captured for input shape {captured}; got {x.shape}. A CUDA graph "
                "replays fixed buffers: pad the batch to that shape, or run without cuda_graph for varying batch sizes."
            )
        if len(self._bound) >= self._MAX_SHAPES:
            self._bound.pop(next(iter(self._bound)))
        binding = self.session.io_binding()
        inp = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype, self.device, self.device_id)
        inp.update_inplace(x)
        binding.bind_ortvalue_input(self.input_name, inp)
        outs = []
        for name in self.output_names:
            dims, dtype = self._outputs[name]
            shape = [x.shape[0] if i == 0 else d for i, d in enumerate(dims)]
            if all(isinstance(d, int) and d > 0 for d in shape):
                out = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device, self.device_id)
                binding.bind_ortvalue_output(name, out)
                outs.append(out)
            elif self.fixed_shape:
                raise ArtifactError(f"Output {name!r} has shape {dims}: a CUDA graph needs outputs whose size is known "
                                    "from the batch; run without cuda_graph.")
            else:  # an output size only the run knows: onnxruntime allocates it on the device
                binding.bind_output(name, self.device, self.device_id)
        self._bound[x.shape] = (binding, inp, outs)
        return self._bound[x.shape]
