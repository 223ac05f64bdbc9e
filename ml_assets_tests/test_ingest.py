"""`ml-assets ingest` into a local landing folder, and what the landing sensor makes of it."""

import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ml_assets.cli import main
from ml_assets.data import landing as landing_module
from ml_assets.data.landing import LocalFolder, add_dataset, is_single
from ml_assets.defs import automation
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the layout builders live there
from layout_builders import BUILDERS  # noqa: E402


def tick(instance, home, cursor=None):
    # Entered: the context closes what it opened (an instance it enters on first use) on exit.
    resources = {"home": home}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return automation.landing_sensor(context)


def test_ingest_copies_a_folder_refuses_to_overwrite_and_replaces_on_request(
    home, tiny_sample, tree_digest
):
    runner = CliRunner()
    before = tree_digest(tiny_sample)
    out = runner.invoke(main, ["ingest", str(tiny_sample), "--name", "shapes"])
    assert out.exit_code == 0, out.output
    target = home / "landing" / "shapes"
    assert f"to {target}" in out.output
    assert tree_digest(target) == before and tree_digest(tiny_sample) == before

    (target / "annotations.json").write_text("{}")  # someone's edit: it must survive a refusal
    out = runner.invoke(main, ["ingest", str(tiny_sample), "--name", "shapes"])
    assert out.exit_code == 1
    assert out.output == f"error: {target} already exists: pass --replace to replace it\n"
    assert (target / "annotations.json").read_text() == "{}"

    out = runner.invoke(main, ["ingest", str(tiny_sample), "--name", "shapes", "--replace"])
    assert out.exit_code == 0, out.output
    assert tree_digest(target) == before
    assert [p.name for p in (home / "landing").iterdir()] == ["shapes"]  # nothing left aside


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", ".."])
def test_ingest_refuses_names_that_are_not_plain_folders(tmp_path, tiny_sample, name):
    with pytest.raises(ValueError, match="plain folder name"):
        add_dataset(tiny_sample, LocalFolder(tmp_path / "landing"), name)


def test_ingest_refuses_an_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds no visible files"):
        add_dataset(tmp_path / "empty", LocalFolder(tmp_path / "landing"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        add_dataset(tmp_path / "missing", LocalFolder(tmp_path / "landing"))
    assert not (tmp_path / "landing" / "empty").exists()


def test_the_sensor_never_sees_an_ingest_half_written(tmp_path, tiny_sample, monkeypatch):
    landing = tmp_path / "landing"
    home = MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))
    seen = []
    copy = shutil.copytree

    def copy_and_look(src, dst, *args, **kwargs):  # a sensor tick after each folder copied
        copy(src, dst, *args, **kwargs)
        with dg.instance_for_test() as instance:
            seen.append(tick(instance, home).skip_reason.skip_message)

    monkeypatch.setattr(landing_module.shutil, "copytree", copy_and_look)
    add_dataset(tiny_sample, LocalFolder(landing), "shapes")
    assert len(seen) == 2  # the dataset folder and its images/ folder
    assert set(seen) == {f"{landing}: the landing root: no visible files"}
    assert (landing / "shapes" / "annotations.json").is_file()


def test_ingesting_the_same_content_again_makes_no_new_version(home, tiny_sample):
    resource = MLAssetsHome(root=str(home))
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(tiny_sample)]).exit_code == 0
    with dg.instance_for_test() as instance:
        first = tick(instance, resource)
        settled = tick(instance, resource, first.cursor)
        [request] = settled.run_requests
        instance.add_dynamic_partitions(dataset_versions.name, [request.partition_key])
        out = runner.invoke(main, ["ingest", str(tiny_sample), "--replace"])
        assert out.exit_code == 0, out.output
        cursor = settled.cursor
        for _ in range(2):  # new files (new inodes), same content: the same, known version
            result = tick(instance, resource, cursor)
            assert not result.run_requests
            cursor = result.cursor
        assert f"version {request.partition_key} is registered" in result.skip_reason.skip_message
        assert instance.get_dynamic_partitions(dataset_versions.name) == [request.partition_key]


@pytest.mark.parametrize(
    ("files", "folders", "single"),
    [
        ({"annotations.json"}, {"images"}, True),  # COCO, as the demo writes it
        ({"data.yaml"}, {"train", "valid"}, True),  # Roboflow YOLO
        (set(), {"Annotations", "JPEGImages"}, True),  # VOC
        (set(), {"train", "valid", "test"}, True),  # Roboflow COCO: <split>/_annotations...
        ({"obj.data", "obj.names", "train.txt"}, {"obj_train_data"}, True),  # CVAT YOLO
        ({"notes.txt"}, set(), True),  # only files: one dataset (its checks say what is wrong)
        (set(), {"shapes", "birds"}, False),  # what `ml-assets ingest` writes
        ({"README.txt"}, {"shapes", "birds"}, False),  # a stray file does not merge them
        (set(), {"cat", "dog"}, False),  # an image-folder set belongs in a folder of its own
    ],
)
def test_which_datasets_the_landing_root_holds(files, folders, single):
    assert is_single(files, folders) is single


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_every_export_layout_dropped_into_the_root_is_one_dataset(tmp_path, layout):
    root = BUILDERS[layout](tmp_path / "landing")
    listing = LocalFolder(root).listing()
    assert [drop.name for drop in listing.drops] == [""] and listing.ignored == []
    assert len(listing.drops[0].items) == sum(1 for p in root.rglob("*") if p.is_file())


def test_ingest_refuses_a_landing_root_that_is_itself_one_dataset(tmp_path, tiny_sample):
    import shutil

    from ml_assets.data.landing import LocalFolder, add_dataset

    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample, landing)  # the demo's layout: a dataset at the root
    with pytest.raises(ValueError, match="is itself one dataset"):
        add_dataset(tiny_sample, LocalFolder(landing), "other")
    assert not (landing / "other").exists()
