"""Pulled weights a training configuration starts from: found in the store before anything
trains, never on the network.

A kind's configuration declares the fields that may name pulled weights
(``KindConfig.pinned_fields``: the classifier's ``pretrained``, the YOLO kinds' ``model``, the
LoRA kinds' ``base_model``). :func:`resolve_weights` finds each name in the store with
:func:`ml_assets.data.weights.lookup`, or fails with one line naming the command that pulls it.
:func:`ml_assets.train.runs.train_fold` takes what it found: it hands each stored copy to the
kind's ``fit`` as ``inputs[field]`` (:func:`with_weights`, read back by :func:`stored_copy`),
writes the names and hashes into the model card ``model.json`` (``pretrained``), the MLflow run's tags and
the model asset's metadata (:func:`weights_tags`), and puts the hashes in the run's
fingerprint, so weights pinned anew under the same name start a run afresh instead of resuming
it.
"""

from __future__ import annotations

from pathlib import Path

from ml_assets.data.store import Store
from ml_assets.data.weights import NotPulledError, Pinned, lookup
from ml_assets.train.kinds import KindConfig


def resolve_weights(config: KindConfig, store: Store) -> dict[str, Pinned]:
    """``{field: pin}`` (name, hash, stored path) of the pulled weights ``config`` names; a
    name nobody pulled raises :class:`~ml_assets.data.weights.NotPulledError` (one line naming
    the command), weights of the wrong form (a folder for a file) a ``ValueError``."""
    found = {}
    for field, name in config.pinned_names().items():
        takes = config.pinned_fields[field]
        try:
            pin = lookup(store, name)
        except NotPulledError:
            if takes != "folder":
                raise
            raise NotPulledError(
                f"no base model named {name!r} in {store.root}: pull one (`ml-assets weights "
                f"pull hf://org/repo[@revision] --name {name}`, or a local save_pretrained "
                f"folder) or materialize the base_model asset with a folder for {name!r}"
            ) from None
        if (pin.kind == "file") != (takes == "file"):
            raise ValueError(
                f"{field} {name!r} names a {pin.kind} ({pin.spec}) but takes a {takes}: pull "
                f"the {takes} under its own name"
            )
        found[field] = pin
    return found


def with_weights(inputs: dict[str, Path] | None, weights: dict[str, Pinned]) -> dict[str, Path]:
    """``inputs`` and the stored copy of each pinned weights, under its config field's name."""
    return {**(inputs or {}), **{field: pin.path for field, pin in weights.items()}}


def stored_copy(config: KindConfig, field: str, inputs: dict[str, Path] | None) -> Path | None:
    """The stored copy of the weights ``config``'s ``field`` names (``inputs[field]``, where
    ``train_fold`` puts it); None when the field names none."""
    name = config.pinned_names().get(field)
    if name is None:
        return None
    if not inputs or field not in inputs:
        raise ValueError(
            f"{field} {name!r} names pulled weights: train through train_fold with "
            "weights=resolve_weights(config, store), which finds their stored copy"
        )
    return Path(inputs[field])


def recorded(weights: dict[str, Pinned]) -> dict[str, dict[str, str]]:
    """What lineage keeps of pinned weights: ``{field: {"name", "hash"}}``."""
    return {field: {"name": pin.name, "hash": pin.hash} for field, pin in weights.items()}


def weights_tags(pretrained: dict[str, dict[str, str]]) -> dict[str, str]:
    """The MLflow tags and model metadata of recorded weights: ``pretrained`` (the classifier's
    field) or ``pretrained_<field>``, the name, and ``..._hash``, its hash."""
    tags = {}
    for field, pin in pretrained.items():
        key = "pretrained" if field == "pretrained" else f"pretrained_{field}"
        tags |= {key: pin["name"], f"{key}_hash": pin["hash"]}
    return tags
