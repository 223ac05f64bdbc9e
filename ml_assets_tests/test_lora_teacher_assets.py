"""The LoRA teachers through Dagster: tiny Grounding DINO and SAM made by `ml-assets base-model
init --tiny`, snapshotted by the base_model asset, an adapter trained for one (version, fold)
with its blocking checks and evaluation, the base hash in the metadata."""

import dagster as dg
import orjson
import pytest
from click.testing import CliRunner
from pipelines import (
    declared_parts_work,
    ingested_version,
    landed_images,
    metadata_of,
    train_fold_assets,
)

from ml_assets.cli import main
from ml_assets.defs import base_models
from ml_assets.train.kinds.lora_detector import LORA_DETECTOR
from ml_assets.train.kinds.lora_segmenter import LORA_SEGMENTER

KINDS = {k.name: k for k in (LORA_DETECTOR, LORA_SEGMENTER)}
ARCH = {"lora_detector": "grounding-dino", "lora_segmenter": "sam"}


@pytest.fixture
def ingested(landed, tmp_path):
    landing, home = landed
    with ingested_version(landing, home) as (instance, key):
        yield instance, home, key


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KINDS))
def test_teacher_trains_is_checked_and_evaluated_on_a_named_base(ingested, tmp_path, name):
    instance, home, key = ingested
    kind = KINDS[name]
    folder = tmp_path / "weights" / ARCH[name]
    made = CliRunner().invoke(
        main, ["base-model", "init", str(folder), "--arch", ARCH[name], "--tiny"]
    )
    assert made.exit_code == 0, made.output
    snapshot = dg.materialize(
        [base_models.base_model],
        resources={"home": home},
        instance=instance,
        run_config={"ops": {"base_model": {"config": {"folders": {ARCH[name]: str(folder)}}}}},
    )
    base_hash = metadata_of(snapshot, "base_model")[f"{ARCH[name]}_hash"]
    result = train_fold_assets(instance, home, key, kind, kind.smoke | {"base_model": ARCH[name]})
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"weights_finite": True, "reloads_identically": True}
    trained = metadata_of(result, name)
    meta = orjson.loads((home.model_dir(name, key, 0) / "lora.json").read_bytes())
    assert meta["base_model"]["hash"] == base_hash and trained["base_model_hash"] == base_hash
    assert 0 < trained["trainable_ratio"] < 0.5 and trained["adapter_size_mb"] > 0
    model_dir = home.model_dir(name, key, 0)
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()
    scores = metadata_of(result, kind.evaluation_name)
    assert kind.primary_metric in scores
    record = orjson.loads((home.evaluation_dir(name, key, 0) / "metrics.json").read_bytes())
    assert record["extra"]["base_model_hash"] == base_hash
    declared_parts_work(kind, model_dir, landed_images(home, key), tmp_path)  # none declared yet
