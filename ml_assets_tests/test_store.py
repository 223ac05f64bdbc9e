import os
import shutil

import pytest

from ml_assets.data import store as store_module
from ml_assets.data.store import HashCache, LandingChangedError, Store, manifest_key, scan


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
    monkeypatch.setattr(HashCache, "RACY_NS", 0)  # the files were written a moment ago
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


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(tmp_path, landing, monkeypatch):
    monkeypatch.setattr(HashCache, "RACY_NS", 0)
    store = Store(tmp_path / "store")
    first = store.register(landing)
    label = landing / "annotations.json"
    stat = label.stat()
    data = bytearray(label.read_bytes())
    data[-2:-1] = b" " if data[-2:-1] != b" " else b"\n"
    label.write_bytes(bytes(data))
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or tar would
    assert label.stat().st_size == stat.st_size and label.stat().st_mtime_ns == stat.st_mtime_ns
    assert store.register(landing) != first


def test_fresh_files_are_hashed_again_until_they_settle(tmp_path, landing, monkeypatch):
    calls = []
    original = store_module.hash_file
    monkeypatch.setattr(store_module, "hash_file", lambda p: calls.append(p) or original(p))
    cache = HashCache(tmp_path / "cache.json")
    scan(landing, cache)
    scan(landing, cache)
    assert len(calls) == 2 * len(list(store_module.walk(landing)))  # just written: racy


def test_folder_links_are_followed_and_loops_refused(tmp_path, landing):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "extra.png").write_bytes(b"x")
    (landing / "more").symlink_to(outside)
    assert "more/extra.png" in {e.path for e in scan(landing)}
    (outside / "loop").symlink_to(landing)
    with pytest.raises(ValueError, match="loop"):
        scan(landing)
