"""The store over time: `ml-assets store status | gc | verify | pin | unpin` on a home built with
the store's own functions and the folders MLAssetsHome names, against a real Dagster instance."""

import os
import time

import dagster as dg
import orjson
import pytest
from click.testing import CliRunner

from ml_assets.cli import main
from ml_assets.data import retention
from ml_assets.data.atomic import link_or_copy
from ml_assets.data.store import TOMBSTONE, VersionCollectedError
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.resources import MLAssetsHome
from ml_assets.local.store import champion_needs, layout, store
from ml_assets.train.runs import promote

KIND = "image_classifier"
SHARED = {"images/a.png": b"a" * 100, "images/b.png": b"b" * 200}
OUTPUTS = {"tables": 10, "folds": 5, "exports/coco": 20, "evaluations": 7, "reports": 8}


def write(path, data: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def cli(*args: str, ok: bool = True):
    main.add_command(store)
    result = CliRunner().invoke(main, ["store", *args])
    assert (result.exit_code == 0) == ok, result.output
    return result


def build_home(tmp_path, instance) -> tuple[MLAssetsHome, list[str], dict]:
    """Three versions (each: two shared files and one of its own), registered a minute apart,
    ingested, with tables, folds, a COCO export (one image hard-linked from the snapshot), a fold
    model, a checkpoint, an evaluation and a report; the first has the champion's final model and
    its ONNX export. Returns the home, the keys oldest first and each version's model bytes."""
    home = MLAssetsHome()
    keys, models = [], {}
    for i in range(3):
        landing = tmp_path / f"landing{i}"
        for name, data in {**SHARED, f"images/own{i}.png": bytes([48 + i]) * (300 + i)}.items():
            write(landing / name, data)
        key = home.store.register(landing)
        home.store.ingest(key)
        stamp = (1_700_000_000 + 60 * i) * 10**9  # registered (and stored) a minute apart
        for path in [home.store.manifest_path(key), *home.store.files_dir(key).rglob("*.png")]:
            os.utime(path, ns=(stamp, stamp))
        keys.append(key)
        write(home.tables_dir(key) / "annotations.parquet", b"t" * OUTPUTS["tables"])
        write(home.folds_path(key), b"f" * OUTPUTS["folds"])
        coco = home.export_dir("coco", key)
        write(coco / "annotations.json", b"c" * OUTPUTS["exports/coco"])
        link_or_copy(home.store.files_dir(key) / "images/a.png", coco / "images/a.png")
        lineage = orjson.dumps({"kind": KIND, "version": key, "fold": 0})
        fold = home.model_dir(KIND, key, 0)
        models[key] = write(fold / "weights.pt", b"w" * 50) + write(fold / "model.json", lineage)
        write(home.run_dir(KIND, key, 1) / "last.pt", b"r" * 60)
        write(home.evaluation_dir(KIND, key, 0) / "scores.json", b"e" * OUTPUTS["evaluations"])
        write(home.report_dir(KIND, key) / "report.json", b"p" * OUTPUTS["reports"])
        instance.add_dynamic_partitions(dataset_versions.name, [key])
    champion = keys[0]
    final = home.model_dir(KIND, champion, None)
    lineage = orjson.dumps({"kind": KIND, "version": champion, "fold": None})
    models[champion] += write(final / "weights.pt", b"W" * 70) + write(
        final / "model.json", lineage
    )
    write(home.exports_dir(KIND, champion) / "model.onnx", b"o" * 9)
    promote(KIND, final, home.champion_path(KIND), champion, 0.9, None)
    return home, keys, models


@pytest.fixture
def built(home, tmp_path):
    with dg.instance_for_test(temp_dir=os.environ["DAGSTER_HOME"]) as instance:
        yield (*build_home(tmp_path, instance), instance)


def garbage(home: MLAssetsHome, tmp_path, data: bytes, age_s: float) -> str:
    """An object no manifest names, written ``age_s`` seconds ago."""
    write(tmp_path / "loose", data)
    sha, _ = home.store.add(tmp_path / "loose")
    stamp = time.time_ns() - int(age_s * 1e9)
    os.utime(home.store.object_path(sha), ns=(stamp, stamp))
    return sha


def test_status_counts_every_byte_once(built, tmp_path):
    home, keys, models, _ = built
    garbage(home, tmp_path, b"g" * 1000, age_s=0)
    doc = orjson.loads(cli("status", "--json").output)
    shared = sum(map(len, SHARED.values()))
    own = [300, 301, 302]
    assert doc["objects"] == {
        "count": 6,
        "bytes": shared + sum(own) + 1000,
        "unreferenced_count": 1,
        "unique_bytes": sum(own),
        "shared_bytes": shared,
        "base_model_bytes": 0,
        "unreferenced_bytes": 1000,
    }
    assert [v["version"] for v in doc["versions"]] == keys  # oldest first
    for i, v in enumerate(doc["versions"]):
        expected = {
            "tables": OUTPUTS["tables"],
            "folds": OUTPUTS["folds"],
            "exports/coco": OUTPUTS["exports/coco"],  # the linked image costs nothing more
            f"models/{KIND}": models[v["version"]],
            f"runs/{KIND}": 60,
            f"evaluations/{KIND}": OUTPUTS["evaluations"],
            f"reports/{KIND}": OUTPUTS["reports"],
        } | ({f"model_exports/{KIND}": 9} if i == 0 else {})
        assert v["outputs"] == expected
        assert (v["files"], v["data_bytes"]) == (3, shared + own[i])
        assert (v["unique_bytes"], v["shared_bytes"]) == (own[i], shared)
        assert v["frees_bytes"] == own[i] + sum(expected.values())
        assert v["state"] == "registered" and v["needed_by"] == (
            [f"champion of {KIND}"] if i == 0 else []
        )
    assert doc["by_output"][f"models/{KIND}"] == {"versions": 3, "bytes": sum(models.values())}
    text = cli("status").output
    assert all(key in text for key in keys) and "unique" in text and "models" in text


def test_gc_keeps_champion_data_pins_and_newest_then_collects(built, tmp_path):
    home, (first, second, third), _, instance = built
    old = garbage(home, tmp_path, b"old garbage", age_s=2 * retention.GRACE_S)
    young = garbage(home, tmp_path, b"young garbage", age_s=0)
    assert "pinned" in cli("pin", second).output

    out = cli("gc", "--keep-last", "1").output
    assert f"keep     {third}  one of the 1 newest" in out
    assert f"keep     {second}  pinned" in out
    # The champion's version keeps its data, the champion's model and its export; the rest goes.
    gone = [
        home.export_dir("coco", first),
        home.model_dir(KIND, first, 0),
        home.run_dir(KIND, first, 1).parent,
        home.evaluation_dir(KIND, first, 0).parent,
        home.report_dir(KIND, first),
    ]
    kept = [
        home.store.files_dir(first),
        home.tables_dir(first),
        home.folds_path(first),
        home.model_dir(KIND, first, None),
        home.exports_dir(KIND, first),
    ]
    assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)
    assert not home.store.object_path(old).exists() and home.store.object_path(young).exists()
    assert sorted(instance.get_dynamic_partitions(dataset_versions.name)) == sorted(
        [first, second, third]
    )
    for key in (second, third):  # kept whole
        assert home.export_dir("coco", key).exists() and home.model_dir(KIND, key, 0).exists()

    # Unpinned, with a run in flight for the newest: only the second goes, partition and all.
    assert "unpinned" in cli("unpin", second).output
    run = dg.DagsterRun(
        job_name="training_job",
        run_id="f" * 36,
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": f"0|{third}", "dagster/partition/version": third},
    )
    instance.add_run(run)
    own_second = home.store.manifest(second)[-1].sha256
    out = cli("gc", "--keep-last", "0").output
    assert f"keep     {third}  run ffffffff of training_job is STARTED" in out
    assert f"removed partition {second} from dataset_versions" in out
    assert sorted(instance.get_dynamic_partitions(dataset_versions.name)) == sorted([first, third])
    assert not home.store.object_path(own_second).exists()
    assert all(home.store.object_path(e.sha256).exists() for e in home.store.manifest(third))
    assert not home.model_dir(KIND, second, 0).exists()
    assert not (home.store.version_dir(second) / "files").exists()
    assert not (home.path / ".trash").exists() or not any((home.path / ".trash").iterdir())

    # The collected version is refused, naming what was removed and when.
    with pytest.raises(
        VersionCollectedError, match=rf"{second} was collected .* removed .*snapshot"
    ):
        home.store.ingest(second)
    with pytest.raises(VersionCollectedError, match="tables"):
        home.store.files_dir(second)
    assert "dataset version" in cli("pin", second, ok=False).output
    doc = orjson.loads(cli("status", "--json").output)
    assert {v["version"]: v["state"] for v in doc["versions"]}[second] == "collected"

    # As the message says: without the tombstone, ingest copies the files again from landing.
    (home.store.version_dir(second) / TOMBSTONE).unlink()
    assert home.store.ingest(second).new_objects == 1


def test_dry_run_changes_nothing(built, tmp_path, tree_digest):
    home, keys, _, instance = built
    garbage(home, tmp_path, b"old garbage", age_s=2 * retention.GRACE_S)
    before = {p: d for p, d in tree_digest(home.path).items() if not p.startswith("dagster/")}
    out = cli("gc", "--keep-last", "0", "--dry-run").output
    for key in keys[1:]:  # the first is the champion's
        assert f"would remove partition {key}" in out
    assert "objects  3 no kept version" in out  # the garbage, the second's and third's own files
    assert "dry run: nothing changed" in out
    after = {p: d for p, d in tree_digest(home.path).items() if not p.startswith("dagster/")}
    assert after == before
    assert len(instance.get_dynamic_partitions(dataset_versions.name)) == 3


def test_interrupted_collection_is_refused_then_finished(built):
    """Interrupted right after the tombstone (in the partition's removal): readers already
    refuse the version, and the next gc removes what is left."""
    home, (_, second, _), _, _ = built
    where = layout(home)
    todo = retention.plan(retention.usage(where), 1, {}, *champion_needs(home, where.areas))

    def interrupted(key):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retention.collect(where, todo, interrupted)
    with pytest.raises(VersionCollectedError):
        home.store.files_dir(second)
    assert home.model_dir(KIND, second, 0).exists()  # not removed yet
    out = cli("gc", "--keep-last", "1").output
    assert f"finish   {second}  collected before" in out
    assert not home.model_dir(KIND, second, 0).exists()
    assert not (home.store.version_dir(second) / "files").exists()


def test_verify_moves_a_flipped_object_aside(built):
    home, keys, _, _ = built
    assert "checked 5 objects: 0 damaged" in cli("verify").output
    entry = home.store.manifest(keys[0])[-1]  # the first version's own file
    path = home.store.object_path(entry.sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[7] ^= 1
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)

    out = cli("verify", ok=False).output
    assert f"damaged object {entry.sha256}" in out and f"{keys[0]}:{entry.path}" in out
    assert "checked 5 objects: 1 damaged" in out
    assert not path.exists()
    assert (home.store.root / "quarantine" / entry.sha256).read_bytes() == bytes(data)
    assert "checked 2 objects: 0 damaged" in cli("verify", "--sample", "2").output


def test_empty_home_and_unknown_versions(home):
    doc = orjson.loads(cli("status", "--json").output)
    assert doc["objects"]["count"] == 0 and doc["versions"] == []
    assert "objects  0 no kept version" in cli("gc", "--dry-run").output
    assert "abc123 is not a registered dataset version" in cli("pin", "abc123", ok=False).output
    assert "not a dataset version key" in cli("unpin", "../x", ok=False).output
