"""Base models: `ml-assets base-model init` writes loadable transformers models; snapshots name
the exact files by content hash and never touch the user's folder."""

import shutil
import sys
import types

import pytest
from click.testing import CliRunner

from ml_assets.cli import main
from ml_assets.data.store import Store
from ml_assets.train import base_models as bm


def init(folder, arch="vit"):
    result = CliRunner().invoke(main, ["base-model", "init", str(folder), "--arch", arch, "--tiny"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("arch", bm.CLASSIFIER_ARCHS)
def test_init_writes_a_tiny_model_with_its_processor_that_classifies(tmp_path, arch):
    import torch
    from transformers import AutoModelForImageClassification

    output = init(tmp_path / arch, arch)
    info = bm.describe_base_model(tmp_path / arch)
    assert f"wrote a tiny {arch} model ({info.parameters:,} parameters)" in output
    assert (tmp_path / arch / "preprocessor_config.json").is_file()
    assert info.model_type == arch and info.image_size == bm.TINY_SIDE
    assert info.parameters < 50_000 and info.size_bytes < 500_000
    model = AutoModelForImageClassification.from_pretrained(
        str(tmp_path / arch), num_labels=3, ignore_mismatched_sizes=True
    )
    logits = model(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 3)


def test_parameter_count_comes_from_the_weights_file(tmp_path):
    from safetensors.torch import load_file

    init(tmp_path / "vit")
    weights = load_file(str(tmp_path / "vit" / "model.safetensors"))
    assert bm.describe_base_model(tmp_path / "vit").parameters == sum(
        t.numel() for t in weights.values()
    )


def test_init_refuses_an_existing_folder_and_unknown_or_missing_architectures(
    tmp_path, monkeypatch
):
    (tmp_path / "taken").mkdir()
    runner = CliRunner()
    taken = runner.invoke(main, ["base-model", "init", str(tmp_path / "taken"), "--arch", "vit"])
    assert taken.exit_code == 1 and "taken already exists" in taken.output
    unknown = runner.invoke(main, ["base-model", "init", str(tmp_path / "x"), "--arch", "lenet"])
    assert unknown.exit_code == 2 and "lenet" in unknown.output
    # The teachers come from ml_assets.train.teacher_models; without its functions: a clear error.
    import ml_assets.train

    empty = types.ModuleType("empty")
    monkeypatch.setitem(sys.modules, "ml_assets.train.teacher_models", empty)
    # An earlier import left the real module on the package too: hide it there as well.
    monkeypatch.setattr(ml_assets.train, "teacher_models", empty, raising=False)
    missing = runner.invoke(main, ["base-model", "init", str(tmp_path / "s"), "--arch", "sam"])
    assert missing.exit_code == 1
    assert "architecture 'sam' is not available" in missing.output
    assert not (tmp_path / "s").exists()


def test_a_snapshot_is_named_by_its_files_and_leaves_the_source_untouched(tmp_path, tree_digest):
    init(tmp_path / "vit")
    store = Store(tmp_path / "store")
    before = tree_digest(tmp_path / "vit")
    first = bm.snapshot_base_model(tmp_path / "vit", store)
    assert tree_digest(tmp_path / "vit") == before
    assert tree_digest(first.folder) == before
    assert bm.snapshot_hash(first.folder) == first.hash
    assert bm.snapshot_base_model(tmp_path / "vit", store) == first  # same files, same hash

    shutil.copytree(tmp_path / "vit", tmp_path / "copy")
    assert bm.snapshot_base_model(tmp_path / "copy", store).hash == first.hash
    objects = [p for p in (store.root / "objects").rglob("*") if p.is_file()]

    # Other weights (another seed) under the same folder: a new hash; the old snapshot stays.
    shutil.rmtree(tmp_path / "vit")
    bm.init_base_model(tmp_path / "vit", "vit", tiny=True, seed=1)
    second = bm.snapshot_base_model(tmp_path / "vit", store)
    assert second.hash != first.hash and first.folder.is_dir()
    # Unchanged files (config, processor) are stored once.
    now = [p for p in (store.root / "objects").rglob("*") if p.is_file()]
    assert len(now) == len(objects) + 1


def test_snapshot_refuses_a_folder_that_is_not_a_transformers_model(tmp_path):
    store = Store(tmp_path / "store")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(ValueError, match=r"photos is not a transformers model: no config.json"):
        bm.snapshot_base_model(tmp_path / "photos", store)
    (tmp_path / "photos" / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(ValueError, match=r"photos is not a transformers model: it holds no weig"):
        bm.snapshot_base_model(tmp_path / "photos", store)
    (tmp_path / "photos" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        bm.snapshot_base_model(tmp_path / "photos", store)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        bm.snapshot_base_model(tmp_path / "nowhere", store)
    assert not (store.root / "base_models").exists()


def test_names_map_to_their_latest_snapshot(tmp_path):
    init(tmp_path / "models" / "small")
    store = Store(tmp_path / "store")
    with pytest.raises(FileNotFoundError, match="no base model named 'small'"):
        bm.named_snapshot(store, "small")
    with pytest.raises(ValueError, match="no base models to snapshot"):
        bm.snapshot_base_models(bm.named_folders(tmp_path / "empty"), store)
    (record,) = bm.snapshot_base_models(bm.named_folders(tmp_path / "models"), store)
    assert record["name"] == "small" and record["model_type"] == "vit"
    assert bm.named_snapshot(store, "small") == bm.Snapshot(
        bm.snapshot_dir(store, record["hash"]) / "files", record["hash"]
    )
