"""Every model folder carries its card (model.json); the registry reads it back to the kind that
trained it, in folders written before the card had that name too."""

import orjson
import pytest

from ml_assets.train.registry import KINDS, model_card
from ml_assets.train.runs import EARLIER_CARD, MODEL_CARD, card_path


@pytest.mark.parametrize("name", [MODEL_CARD, EARLIER_CARD])
def test_the_registry_reads_a_card_back_to_its_kind(tmp_path, name):
    card = {"kind": "yolo_segmenter", "classes": [{"id": 1, "name": "circle"}], "fold": 0}
    (tmp_path / name).write_bytes(orjson.dumps(card))
    kind, read = model_card(tmp_path)
    assert kind is KINDS["yolo_segmenter"] and read == card
    assert card_path(tmp_path) == tmp_path / name


def test_a_folder_without_a_card_or_kind_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no trained model here .*model.json"):
        model_card(tmp_path)
    (tmp_path / MODEL_CARD).write_bytes(orjson.dumps({"classes": []}))
    with pytest.raises(ValueError, match="names no kind"):
        model_card(tmp_path)
    (tmp_path / MODEL_CARD).write_bytes(orjson.dumps({"kind": "nope"}))
    with pytest.raises(ValueError, match="unknown model kind 'nope'"):
        model_card(tmp_path)
