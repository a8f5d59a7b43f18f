"""What every backend offers the runtime core: the session protocol, its tensor descriptions, and the
one table of element types.

A backend opens a model file into a :class:`Session`: the part of onnxruntime's
``InferenceSession`` interface the core reads (inputs, outputs, the file's metadata, the providers
it runs on, ``run``) plus :meth:`Session.run_array`, the per-call path for the one input. The core,
its runners and the task heads see nothing else, so the card, the image loader, batching and the
heads are the same whichever backend runs the graph.

Element types have one table, :data:`DTYPES`: the ONNX type string a session reports
(``tensor(float)``), the numpy dtype, the Open Inference Protocol datatype the server speaks
(``FP32``) and OpenVINO's element type name (``f32``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["Session", "TensorArg", "ModelMeta", "SessionInfo", "DType", "DTYPES", "FLOAT_TYPES", "GPU_PROVIDERS",
           "numpy_dtype", "onnx_type", "v2_datatype", "v2_numpy", "dtype_row"]

# onnxruntime's GPU execution providers: a session whose first provider is one of them runs on the GPU.
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True, kw_only=True)
class DType:
    """One element type under each of its names."""

    onnx: str  # as sessions report it: tensor(float)
    numpy: str  # numpy's dtype name: float32
    v2: str  # the Open Inference Protocol (KServe v2, Triton) datatype: FP32
    openvino: str  # OpenVINO's element type name: f32


DTYPES: tuple[DType, ...] = tuple(DType(onnx=f"tensor({o})", numpy=n, v2=v, openvino=ov) for o, n, v, ov in (
    ("float", "float32", "FP32", "f32"), ("float16", "float16", "FP16", "f16"), ("double", "float64", "FP64", "f64"),
    ("uint8", "uint8", "UINT8", "u8"), ("uint16", "uint16", "UINT16", "u16"), ("uint32", "uint32", "UINT32", "u32"),
    ("uint64", "uint64", "UINT64", "u64"), ("int8", "int8", "INT8", "i8"), ("int16", "int16", "INT16", "i16"),
    ("int32", "int32", "INT32", "i32"), ("int64", "int64", "INT64", "i64"), ("bool", "bool", "BOOL", "boolean"),
))
# The model inputs the core feeds: float arrays (a float16 input gets the float32 batch cast to it).
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")

_BY_NAME: dict[str, DType] = {}
for _row in DTYPES:
    for _name in (_row.onnx, _row.numpy, _row.v2, _row.openvino):
        _BY_NAME.setdefault(_name, _row)
_FLOAT = DTYPES[0]


def dtype_row(name: str | np.dtype | type) -> DType | None:
    """The row of an ONNX type string, numpy dtype (or its name), v2 datatype or OpenVINO type name;
    None for a type outside the table (strings, bfloat16, ...)."""
    if not isinstance(name, str):
        try:
            name = np.dtype(name).name
        except TypeError:
            return None
    return _BY_NAME.get(name)


def numpy_dtype(name: str | np.dtype | type, default: Any = np.float32) -> np.dtype:
    """The numpy dtype of any name in the table (``default`` for the others)."""
    row = dtype_row(name)
    return np.dtype(row.numpy if row is not None else default)


def onnx_type(name: str | np.dtype | type, default: str = _FLOAT.onnx) -> str:
    """The ONNX type string (``tensor(float)``) of any name in the table (``default`` for the others)."""
    row = dtype_row(name)
    return row.onnx if row is not None else default


def v2_datatype(name: str | np.dtype | type, default: str = _FLOAT.v2) -> str:
    """The Open Inference Protocol datatype (``FP32``) of any name in the table (``default`` for the others)."""
    row = dtype_row(name)
    return row.v2 if row is not None else default


def v2_numpy() -> dict[str, np.dtype]:
    """Every Open Inference Protocol datatype of the table (``BYTES`` is not one) -> its numpy dtype."""
    return {row.v2: np.dtype(row.numpy) for row in DTYPES}


@dataclass(frozen=True, kw_only=True)
class TensorArg:
    """An input or output as ``InferenceSession.get_inputs()`` describes it: name, shape (names for
    dynamic axes) and ``tensor(float)``-style type. What the OpenVINO and LiteRT sessions return, so
    the core reads every backend alike."""

    name: str
    shape: list[Any]
    type: str


@dataclass(frozen=True, kw_only=True)
class ModelMeta:
    """``InferenceSession.get_modelmeta()``'s part the core reads: the file's metadata map."""

    custom_metadata_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SessionInfo:
    """What was asked for and what the backend actually runs."""

    requested: str
    providers: list[str]
    fallback: str | None  # a message when the session runs on another provider than requested
    creation_s: float

    @property
    def device(self) -> str:
        """``cuda`` when the first provider is a GPU one, else ``cpu``."""
        return "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"


class Session(Protocol):
    """A model opened by a backend, as the runtime core calls it.

    ``run`` is onnxruntime's signature (outputs by name, or all with None; a feed dict);
    :meth:`run_array` is the per-call path: every output, in graph order, for one array fed to the
    first input, with nothing built per call.
    """

    def get_inputs(self) -> list[Any]: ...

    def get_outputs(self) -> list[Any]: ...

    def get_modelmeta(self) -> Any: ...

    def get_providers(self) -> list[str]: ...

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def run_array(self, x: np.ndarray) -> list[np.ndarray]: ...

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """A float model input as :meth:`run_array` takes it (LiteRT quantizes it for an int8 input):
        done once before a timed loop, so that the loop times the model alone."""
        ...

    def load(self) -> None:
        """Finish what opening deferred (OpenVINO compiles here), so that its errors come now."""
        ...
