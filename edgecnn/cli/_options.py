"""Option groups shared by commands: each adds its flags and hands the command one typed value.

``@model_options()`` gives ``overrides`` (:class:`edgecnn.presets.ModelOverrides`),
``@runtime_options()`` gives ``runtime`` (:class:`edgecnn.runtime.options.RuntimeOptions`) holding
only what the user typed, so that an export directory's ``deploy.json`` supplies the rest. The choice
lists come from the modules that define the concepts (all cheap to import: ``--help`` stays fast).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import click

from edgecnn.runtime.options import (
    BACKENDS,
    CONV_ALGO_SEARCH,
    OV_PRECISIONS,
    PROVIDERS,
    CudaOptions,
    RuntimeOptions,
)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# The keyword names of the model flags, popped into ``overrides``.
MODEL_FLAGS = ("input_size", "channels", "layout", "preprocess", "mean", "std", "labels", "task", "channels_order",
               "resize", "resample", "pad_value", "shorter_side", "gray", "batch_axis", "output_layout")
RUNTIME_FLAGS = ("backend", "provider", "device", "precision", "threads", "allow_fallback")


def _group(options: Sequence[Callable[[Any], Any]], convert: Callable[[dict[str, Any]], dict[str, Any]]) -> Decorator:
    """A decorator adding ``options`` to a command whose body receives ``convert(kwargs)`` in place
    of them (``convert`` pops its flags out of the keyword arguments)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            kwargs.update(convert(kwargs))
            return fn(*args, **kwargs)

        decorated: Callable[..., Any] = command
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate


def model_options(*, layout_help: str = "Input layout of the model: nchw or nhwc (default: read from its input shape).",
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """What a model file does not say about itself, with the same flags on every command that takes a
    model (--input-size, --channels, --layout, --preprocess, --mean, --std, --labels, --channels-order,
    --resize, --resample, --pad-value, --shorter-side, --gray, --output-layout, --batch-axis, --task):
    the command receives them parsed and validated as one ``overrides``
    (:class:`edgecnn.presets.ModelOverrides`)."""

    def overrides(values: dict[str, Any]) -> dict[str, Any]:
        from edgecnn.presets import parse_overrides

        return {"overrides": parse_overrides(**{k: values.pop(k) for k in MODEL_FLAGS})}

    return _group(_model_flags(layout_help), overrides)


def _model_flags(layout_help: str) -> Sequence[Callable[[Any], Any]]:
    """The click options of :func:`model_options` (their choices from the card's vocabulary)."""
    from edgecnn.card import GRAY_RULES, OUTPUT_KINDS, RESAMPLE_FILTERS, RESIZE_MODES, TASKS
    from edgecnn.presets import PREPROCESS_PRESETS

    presets = "; ".join(f"{k}: {v.description}" for k, v in PREPROCESS_PRESETS.items())
    options = [
        click.option("--input-size", default=None, metavar="HxW",
                     help="Input size for a model with a dynamic height/width."),
        click.option("--channels", type=click.Choice(["1", "3"]), default=None,
                     help="Input channels: 1 (gray) or 3 (RGB)."),
        click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default=None, help=layout_help),
        click.option("--preprocess", type=click.Choice(list(PREPROCESS_PRESETS)), default=None,
                     help=f"Normalization preset ({presets})."),
        click.option("--mean", default=None, metavar="R,G,B", help="Per-channel mean on the 0-255 scale (with --std)."),
        click.option("--std", default=None, metavar="R,G,B",
                     help="Per-channel std on the 0-255 scale, e.g. 58.395,57.12,57.375."),
        click.option("--labels", default=None, metavar="FILE|a,b,c",
                     help="Class names: a text file, one per line, a,b,c, or one name."),
        click.option("--channels-order", type=click.Choice(["rgb", "bgr"], case_sensitive=False), default=None,
                     help="Channel order the model takes (default: its card, else rgb); images are read as RGB "
                          "and reordered for it."),
        click.option("--resize", type=click.Choice(list(RESIZE_MODES)), default=None,
                     help="How an image is fitted to the input size: stretch (default), letterbox (aspect kept, "
                          "centred; detectors), keep-aspect (aspect kept, padded right/bottom; YOLOX), fit-height "
                          "(height filled, padded right; OCR text lines), center-crop (shorter side, then the "
                          "centre; torchvision/timm classifiers; paddle-crop: the same with PaddleClas's rounding), "
                          "stretch-crop (stretched to the side, then the centre; "
                          "Caffe-era classifiers)."),
        click.option("--resample", type=click.Choice(list(RESAMPLE_FILTERS)), default=None,
                     help="Pillow's resize filter (default: the card's, else bilinear)."),
        click.option("--pad-value", type=int, default=None, metavar="0-255",
                     help="Border value for letterbox, keep-aspect and fit-height (default 114)."),
        click.option("--shorter-side", type=int, default=None, metavar="N",
                     help="center-crop, paddle-crop, stretch-crop: the side before the crop (default: input side / "
                          "0.875, 256 for 224)."),
        click.option("--output-layout", type=click.Choice(sorted({k for v in OUTPUT_KINDS.values() for k in v})),
                     default=None, help="What the outputs hold: classify/segment probabilities|logits (a "
                                        "sigmoid or softmax at the end: probabilities), detect yolov8|yolov5|yolox, "
                                        "or with NMS in the graph end2end ([N, K, 6] rows) or boxes-xyxy|boxes-yxyx "
                                        "(boxes, scores, classes outputs; TensorFlow's are y-first) (default: read "
                                        "from the graph)."),
        click.option("--batch-axis", type=int, default=None, metavar="N",
                     help="The outputs' image axis when it is not 0: 1 for a time-major [T, N, C] sequence output "
                          "(CTC recognizers; default: read from the graph, or from the first run)."),
        click.option("--gray", type=click.Choice(list(GRAY_RULES)), default=None,
                     help="1-channel models: luma (ITU-R 601-2, Pillow's L and OpenCV's BGR2GRAY; default) or "
                          "average ((R+G+B)/3)."),
        click.option("--task", type=click.Choice(list(TASKS)), default=None,
                     help="What the model does (default: its card, "
                     "Ultralytics metadata or its output shapes)."),
    ]
    return options



def runtime_options(*, providers: tuple[str, ...] = PROVIDERS, threads_help: str = "Intra-op threads (default: all "
                    "cores).") -> Decorator:
    """--backend, --provider, --allow-fallback, --threads, --device and --precision -> ``runtime``
    (:class:`~edgecnn.runtime.options.RuntimeOptions`) holding only the flags the user typed."""
    options: list[Callable[[Any], Any]] = [
        click.option("--backend", type=click.Choice(BACKENDS[:2]), default="onnxruntime", show_default=True,
                     help="Runtime: onnxruntime or openvino (the [openvino] extra); a .tflite runs on LiteRT."),
        click.option("--provider", type=click.Choice(providers), default="cpu", show_default=True,
                     help="onnxruntime's execution provider."),
        click.option("--allow-fallback", is_flag=True, help="Run on the CPU (with a warning) if the provider is "
                     "unusable."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help=threads_help),
        device_option(),
        click.option("--precision", type=click.Choice(OV_PRECISIONS), default=None,
                     help="OpenVINO execution precision (default f32: the same results as onnxruntime)."),
    ]

    def runtime(values: dict[str, Any]) -> dict[str, Any]:
        from edgecnn.cli._app import given

        typed = given(click.get_current_context(), **{k: values.pop(k) for k in RUNTIME_FLAGS})
        if typed.get("allow_fallback") is False:
            del typed["allow_fallback"]
        return {"runtime": RuntimeOptions(**typed)}

    return _group(options, runtime)


def cuda_options() -> Decorator:
    """--cuda-graph, --cudnn-conv-algo-search, --prefer-nhwc and --device-id -> ``cuda``
    (:class:`~edgecnn.runtime.options.CudaOptions`)."""
    options = [
        click.option("--cuda-graph", is_flag=True, help="CUDA provider: capture and replay CUDA graphs (a session "
                     "per batch)."),
        click.option("--cudnn-conv-algo-search", type=click.Choice(CONV_ALGO_SEARCH, case_sensitive=False),
                     default="EXHAUSTIVE", show_default=True, help="CUDA provider: how cuDNN picks convolution "
                     "algorithms."),
        click.option("--prefer-nhwc/--no-prefer-nhwc", default=None, help="CUDA provider: channels-last convolutions."),
        click.option("--device-id", default=0, show_default=True, type=click.IntRange(min=0), help="CUDA device."),
    ]

    def cuda(values: dict[str, Any]) -> dict[str, Any]:
        return {"cuda": CudaOptions(cuda_graph=values.pop("cuda_graph"), prefer_nhwc=values.pop("prefer_nhwc"),
                                    cudnn_conv_algo_search=values.pop("cudnn_conv_algo_search"),
                                    device_id=values.pop("device_id"))}

    return _group(options, cuda)


def device_option() -> Decorator:
    """--device: OpenVINO's device, CPU, GPU or NPU in any case, with an index for a second one
    (GPU.1); checked by :class:`~edgecnn.runtime.options.RuntimeOptions`, given upper-case."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        from edgecnn.errors import EdgecnnError

        try:
            return RuntimeOptions(device=value.upper()).device
        except EdgecnnError as err:
            raise click.BadParameter(str(err)) from None

    return click.option("--device", default="CPU", show_default=True, metavar="CPU|GPU|NPU", callback=check,
                        help="OpenVINO device (GPU.1: the second GPU).")


def input_size_value(value: str | None) -> tuple[int, int] | None:
    """A ``--input-size`` flag's value (N or HxW) -> (height, width), checked as a flag: a bad
    value is click's usage error naming the flag (exit 2), as every other malformed flag."""
    from edgecnn.errors import ConfigError
    from edgecnn.presets import parse_input_size

    if value is None:
        return None
    try:
        size = parse_input_size(value)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--input-size") from None
    if size is None:
        raise click.BadParameter("expected N or HxW (e.g. 224 or 480x640), got an empty value.",
                                 param_hint="--input-size")
    return size


def split_list(text: str) -> tuple[str, ...]:
    """``"onnxruntime, openvino"`` -> ``("onnxruntime", "openvino")``; the stage's config validates the names."""
    return tuple(s.strip() for s in text.split(",") if s.strip())
