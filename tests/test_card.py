import json

import pytest

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError


def _card(**kw):
    base = dict(name="r", architecture="seed_cnn", class_names=["a", "b", "c"], input_size=(32, 32))
    return ModelCard(**{**base, **kw})


def test_round_trip_json_and_file(tmp_path):
    card = _card(mean=(1, 2, 3), std=(4, 5, 6), metrics={"test_accuracy": 0.5}, layout="nchw")
    assert ModelCard.from_json(card.to_json()) == card
    card.save(tmp_path / "card.json")
    assert ModelCard.load(tmp_path) == card
    assert card.input_shape(2) == (2, 3, 32, 32)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


@pytest.mark.parametrize("kw, message", [
    ({"std": (0, 1, 1)}, "std must be positive"),
    ({"layout": "hwc"}, "layout"),
    ({"class_names": []}, "class_names is empty"),
    ({"mean": (1, 2)}, "mean/std"),
    ({"input_size": (0, 32)}, "input_size"),
    ({"channel_order": "RBG"}, "channel_order"),
])
def test_invalid_cards_fail_with_a_reason(kw, message):
    with pytest.raises(ArtifactError, match=message):
        _card(**kw)


def test_load_errors(tmp_path):
    with pytest.raises(ArtifactError, match="No model card"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not JSON"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ArtifactError, match="missing input_size, class_names"):
        ModelCard.load(tmp_path)


def test_unknown_keys_are_ignored_for_forward_compatibility():
    data = {**_card().to_dict(), "future_field": 1}
    assert ModelCard.from_dict(data) == _card()
