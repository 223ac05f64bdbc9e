import pytest

from ml_assets.data.atomic import atomic_dir, write_bytes


def test_write_bytes_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = write_bytes(tmp_path / "a" / "f.bin", b"one")
    write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_a_failed_block_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(dst) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    with atomic_dir(dst) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(dst, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
        raise RuntimeError("boom")
    assert [p.name for p in dst.iterdir()] == ["v1"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_folders_are_refused_or_replaced_whole(tmp_path):
    dst = tmp_path / "out"
    with atomic_dir(dst) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(FileExistsError, match="already exists"):
        atomic_dir(dst).__enter__()
    with atomic_dir(dst, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert [p.name for p in dst.iterdir()] == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_when_another_writer_finishes_first_it_wins(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(FileExistsError, match="appeared while"), atomic_dir(dst) as tmp:
        (tmp / "mine").write_text("mine")
        dst.mkdir()
        (dst / "theirs").write_text("theirs")
    assert [p.name for p in dst.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
