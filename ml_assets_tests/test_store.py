import shutil

import pytest

from ml_assets.data import store as store_module
from ml_assets.data.store import LandingChangedError, Store, manifest_key, scan


@pytest.fixture
def landing(tmp_path, tiny_sample):
    folder = tmp_path / "landing"
    shutil.copytree(tiny_sample, folder)
    return folder


def test_same_data_same_key_new_drop_new_key(tmp_path, landing):
    store = Store(tmp_path / "store")
    first = store.register(landing)
    assert first == store.register(landing)
    assert first == Store(tmp_path / "other").register(landing)  # key depends on content only
    (landing / "images" / "extra.png").write_bytes(b"new drop")
    second = store.register(landing)
    assert second != first and len(second) == 12
    assert {e.path for e in store.manifest(second)} - {e.path for e in store.manifest(first)} == {
        "images/extra.png"
    }


def test_ingest_stores_each_content_once_and_never_touches_landing(tmp_path, landing, tree_digest):
    (landing / "images" / "copy.png").write_bytes(
        (landing / "images" / "shapes_000000.png").read_bytes()
    )
    before = tree_digest(landing)
    store = Store(tmp_path / "store")
    key = store.register(landing)
    stats = store.ingest(key)
    assert stats.files == len(before) and stats.new_objects == len(before) - 1
    assert tree_digest(store.files_dir(key)) == before
    assert tree_digest(landing) == before
    objects = [p for p in (tmp_path / "store" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == len(before) - 1
    assert all(p.stat().st_mode & 0o222 == 0 for p in objects)

    (landing / "more.txt").write_text("second drop")
    again = store.ingest(store.register(landing))
    assert again.new_objects == 1 and again.reused_objects == len(before)


def test_changed_landing_file_is_refused_by_name(tmp_path, landing):
    store = Store(tmp_path / "store")
    key = store.register(landing)
    (landing / "annotations.json").write_text("{}")
    with pytest.raises(LandingChangedError, match="annotations.json changed"):
        store.ingest(key)
    assert not store.files_dir(key).exists()


def test_warm_scan_hashes_nothing(tmp_path, landing, monkeypatch):
    store = Store(tmp_path / "store")
    cold = scan(landing, store.cache)
    calls = []
    original = store_module.hash_file
    monkeypatch.setattr(store_module, "hash_file", lambda p: calls.append(p) or original(p))
    assert scan(landing, store.cache) == cold
    assert calls == []
    (landing / "images" / "shapes_000001.png").write_bytes(b"changed")
    changed = scan(landing, store.cache)
    assert [c.name for c in calls] == ["shapes_000001.png"]
    assert manifest_key(changed) != manifest_key(cold)


def test_unknown_version_and_empty_landing(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(KeyError, match="not registered"):
        store.manifest("abc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        store.register(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.register(tmp_path / "missing")
