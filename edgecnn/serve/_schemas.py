"""Pydantic models of the HTTP API: they document the OpenAPI spec (responses are built by hand)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["ErrorResponse", "PredictResponse", "ModelList", "ModelInfo", "Health", "PREDICT_REQUEST_BODY"]


class ErrorDetail(BaseModel):
    status: int = Field(description="The HTTP status, repeated.")
    code: str = Field(description="A stable machine-readable code, e.g. invalid_image, overloaded.")
    message: str = Field(description="What went wrong and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Label(BaseModel):
    label: str
    index: int
    probability: float


class Detection(BaseModel):
    label: str
    index: int
    score: float
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the original image.")


class ClassShare(BaseModel):
    label: str
    index: int
    fraction: float = Field(description="Share of the image's pixels given this class.")


class Segmentation(BaseModel):
    height: int
    width: int
    classes: list[ClassShare] = Field(description="Classes present, largest share first.")
    mask_png: str | None = Field(None, description="With ?mask=true: the class map, a base64 PNG of width x height, "
                                                   "each pixel its class index (8-bit grey; 16-bit past 255 classes).")


class ImagePrediction(BaseModel):
    """One image's answer; which key is present depends on the model's task."""

    top_k: list[Label] | None = Field(None, description="classify: most probable classes first.")
    detections: list[Detection] | None = Field(None, description="detect: boxes, highest score first.")
    segmentation: Segmentation | None = Field(None, description="segment: the class map's summary.")
    outputs: list[dict[str, Any]] | None = Field(None, description="raw: each output's name, shape and summary.")


class PredictResponse(BaseModel):
    model: str = Field(description="The served model name.")
    version: str = Field(description="First 12 hex digits of the model file's SHA-256.")
    predictions: list[ImagePrediction] = Field(description="One entry per image or tensor, in request order.")


class ModelInfo(BaseModel):
    name: str
    version: str
    task: str = Field(description="classify, detect, segment or raw.")
    max_batch: int
    input: dict[str, Any]
    providers: list[str]
    card: dict[str, Any] = Field(description="The model card: labels, input size, normalization, metrics...")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok", "ready"]


class PredictJSON(BaseModel):
    """A batch of tensors instead of an image."""

    instances: list[Any] = Field(min_length=1, description=(
        "input=tensor: model inputs, each of the model's input shape without the batch axis (normalized, card "
        "layout). input=pixels: HxWx3 RGB pixels 0-255 at the model's input size."))
    input: Literal["tensor", "pixels"] = "tensor"

    model_config = {"extra": "forbid"}


_BINARY = {"schema": {"type": "string", "format": "binary"}}

PREDICT_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "description": "An image (PNG, JPEG, WebP, BMP, GIF...) as raw bytes or a multipart `file` upload, "
                   "or JSON tensors.",
    "content": {
        "image/png": _BINARY,
        "image/jpeg": _BINARY,
        "application/octet-stream": _BINARY,
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "application/json": {"schema": PredictJSON.model_json_schema()},
    },
}


# ------------------------------------------------------------------- Open Inference Protocol (v2)

class V2Error(BaseModel):
    error: str = Field(description="What was wrong (the Open Inference Protocol's error format).")


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="FP32, FP16, FP64, UINT8, INT64, BYTES, ...")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when the data follows the JSON.")
    data: list[Any] | None = Field(None, description="The values, flat or nested, in row-major order.")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data (bool), classification (top k).")


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output (bool).")
    inputs: list[V2Tensor] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2Tensor]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2Tensor]
    outputs: list[V2Tensor]
    parameters: dict[str, Any] | None = None


class V2ConfigTensor(BaseModel):
    name: str
    data_type: str
    dims: list[int]


class V2ModelConfig(BaseModel):
    """Triton's model configuration, as tritonclient's get_model_config reads it."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    version_policy: dict[str, Any]
    input: list[V2ConfigTensor]
    output: list[V2ConfigTensor]
    parameters: dict[str, Any]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool
    name: str | None = None


V2_INFER_BODY: dict[str, Any] = {
    "required": True,
    "description": "JSON, or with the binary tensor data extension a JSON header of Inference-Header-Content-Length "
                   "bytes followed by the tensors' bytes.",
    "content": {"application/json": {"schema": V2InferRequest.model_json_schema()},
                "application/octet-stream": _BINARY},
}
