"""The ``base_model`` asset: local transformers folders snapshotted into the store, by name; and
the ``pretrained_weights`` asset: weights pulled once (``ml_assets.data.weights.pull``) and
pinned by name, the launchpad's form of ``ml-assets weights pull``.

A base model is named by the user (``vit-base``) and lives in a local ``save_pretrained``
folder: every folder under ``<home>/base_models/`` (named by its folder), plus any named in the
launchpad's ``folders`` (name -> folder). Each materialization snapshots them all into the
content-addressed store (unchanged files are not copied again) and records each name's snapshot;
LoRA kinds train on the snapshot their config's ``base_model`` names, and every adapter records
its hash. ``base_model`` never downloads; ``pretrained_weights`` is the one asset that may.
"""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ml_assets.defs.resources import MLAssetsHome

# A folder of base models by name, beside the landing folder of datasets.
BASE_MODELS_FOLDER = "base_models"


class BaseModelConfig(dg.Config):
    folders: dict[str, str] = Field(
        default={},
        description="Base model name -> local save_pretrained folder (config.json, weights, "
        "processor). Every folder in <home>/base_models/ is also one, named by its folder.",
    )


@dg.asset(
    group_name="base_models",
    kinds={"pytorch"},
    description="Local transformers models snapshotted into the content-addressed store, by "
    "name; LoRA adapters train on them and record their hash.",
)
def base_model(config: BaseModelConfig, home: MLAssetsHome) -> dg.MaterializeResult:
    from ml_assets.train.base_models import named_folders, snapshot_base_models

    folders = named_folders(home.path / BASE_MODELS_FOLDER) | {
        name: Path(folder).expanduser() for name, folder in config.folders.items()
    }
    records = snapshot_base_models(folders, home.store)
    metadata: dict = {"base_models": len(records)}
    for r in records:
        metadata |= {
            f"{r['name']}_hash": r["hash"],
            f"{r['name']}_architecture": r["model_type"],
            f"{r['name']}_parameters": r["parameters"],
            f"{r['name']}_size_mb": round(r["size_bytes"] / 1e6, 3),
            f"{r['name']}_source": dg.MetadataValue.path(r["source"]),
        }
    table = pd.DataFrame(records)[["name", "hash", "model_type", "parameters", "size_bytes"]]
    metadata["table"] = dg.MetadataValue.md(table.to_markdown(index=False))
    snapshots = sorted(f"{r['name']}={r['hash']}" for r in records)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(",".join(snapshots)))


class PretrainedWeightsConfig(dg.Config):
    weights: dict[str, str] = Field(
        default={},
        description="Name -> spec to pull and pin: a local file or folder, an http(s):// URL "
        "(#sha256=<hex> is checked), s3://bucket/key, hf://org/repo[@revision][/file], a timm "
        "name (resnet50.a1_in1k) or an ultralytics name (yolo11n.pt). Pinned names pull nothing "
        "again; empty: record what is pinned",
    )
    replace: bool = Field(
        default=False,
        description="Fetch again and pin whatever bytes come (a different hash is otherwise "
        "refused; runs that recorded the old hash then start afresh)",
    )


@dg.asset(
    group_name="base_models",
    kinds={"pytorch"},
    description="Pretrained weights pulled once into the content-addressed store and pinned by "
    "name (the only step that may use the network): model configs name them (pretrained, "
    "model, base_model) and every model records their hash. Lists every pin.",
)
def pretrained_weights(
    context: dg.AssetExecutionContext, config: PretrainedWeightsConfig, home: MLAssetsHome
) -> dg.MaterializeResult:
    from ml_assets.data.weights import pinned, pull

    for name, spec in config.weights.items():
        pin = pull(
            spec, home.store, name=name, replace=config.replace, client_factory=home.s3_client
        )
        said = "pulled" if pin.fetched else "already pulled"
        context.log.info(f"{said} {pin.name}: {pin.kind} {pin.hash} from {pin.source}")
    pins = pinned(home.store)
    metadata: dict = {"pins": len(pins)}
    if pins:
        rows = [p.to_dict() for p in pins]
        columns = ["name", "kind", "spec", "hash", "size", "revision", "pulled_at"]
        metadata["table"] = dg.MetadataValue.md(
            pd.DataFrame(rows)[columns].to_markdown(index=False)
        )
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(",".join(sorted(f"{p.name}={p.hash}" for p in pins))),
    )
