"""The card a model runs under, and the graph input it names.

A file with an embedded card (ONNX ``metadata_props``, the TFLite flatbuffer's ``metadata``) runs
under that card with the caller's overrides applied; a file without one under a card inferred from
the graph, the file's own metadata (Ultralytics' ``imgsz``/``names``/``task``/``stride``) and the
overrides (:func:`edgecnn.card_inference.infer_card`), with one line saying what was assumed.
:func:`card_input` then checks that the graph has the input the card describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecnn.card import ONNX_METADATA_KEY, ModelCard
from edgecnn.card_inference import infer_card
from edgecnn.errors import ArtifactError
from edgecnn.presets import ModelOverrides, TensorInfo
from edgecnn.runtime.backends.base import FLOAT_TYPES, Session, dtype_row

__all__ = ["read_card", "resolve_card", "card_input"]


def read_card(session: Session) -> ModelCard | None:
    """The model card stored in the file's metadata (ONNX ``metadata_props``, the TFLite
    flatbuffer's ``metadata``), or None when there is none.

    Raises:
        ArtifactError: if a card is present but is not a valid one.
    """
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    return None if text is None else ModelCard.from_json(text)


def resolve_card(session: Session, name: str, embedded: ModelCard | None, overrides: ModelOverrides | None, *,
                 inputs: Sequence[Any], outputs: Sequence[Any]) -> tuple[ModelCard, str | None]:
    """The card (the given or embedded one with the overrides applied; without one, a card
    inferred from the session's graph ``inputs`` and ``outputs``, the file's metadata and the
    overrides, named ``name``) and what was assumed (None when nothing was)."""
    if embedded is not None:
        return (overrides.apply(embedded) if overrides else embedded), None

    def tensors(args: Sequence[Any]) -> list[TensorInfo]:
        return [TensorInfo(a.name, tuple(a.shape), _type_name(a.type)) for a in args]

    meta = session.get_modelmeta().custom_metadata_map
    return infer_card(name, inputs=tensors(inputs), outputs=tensors(outputs), overrides=overrides or ModelOverrides(),
                      metadata=meta)


def card_input(graph_inputs: Sequence[Any], card: ModelCard, model_path: Path) -> Any:
    """The graph input the card names (the only one when the name differs), checked against the card.

    Raises:
        ArtifactError: for no such input, a shape that is not the card's, or an input that is not a float
            (uint8 for a self-contained file).
    """
    inputs = {i.name: i for i in graph_inputs}
    inp = inputs.get(card.input_name) or (next(iter(inputs.values())) if len(inputs) == 1 else None)
    if inp is None:
        raise ArtifactError(f"{model_path}: the card names input {card.input_name!r}, the model has {list(inputs)}.")
    expected = card.input_shape()
    if len(inp.shape) != 4 or any(isinstance(a, int) and b is not None and a != b
                                  for a, b in zip(inp.shape, expected)):
        raise ArtifactError(
            f"{model_path}: the model input {inp.name!r} has shape {inp.shape} but the card "
            f"({card.layout}, {card.channels} channels, {card.input_size}) expects "
            f"{list(expected)}; check --layout, --channels and --input-size."
        )
    if card.self_contained:
        if inp.type != "tensor(uint8)":
            raise ArtifactError(f"{model_path}: the card says the file is self-contained (uint8 pixels in) but input "
                                f"{inp.name!r} is {inp.type}; the card does not belong to this file.")
    elif inp.type not in FLOAT_TYPES:
        raise ArtifactError(f"{model_path}: input {inp.name!r} is {inp.type}; edgecnn needs a float input.")
    return inp


def _type_name(onnx_type: str) -> str:
    """numpy's name of an element type (``float32``), or the type as the session gave it when the
    table has no row for it: what :func:`~edgecnn.card_inference.infer_card` reads."""
    row = dtype_row(onnx_type)
    return row.numpy if row is not None else onnx_type
