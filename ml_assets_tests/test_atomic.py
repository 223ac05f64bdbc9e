import signal
import time

import pytest

from ml_assets.data.atomic import atomic_dir, atomic_path, write_bytes


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


def test_ctrl_c_during_a_checkpoint_write_is_a_keyboard_interrupt_and_keeps_the_old_file(tmp_path):
    """Into an open file, torch's writer swallowed a Ctrl-C and raised RuntimeError('unexpected
    pos'); written by name, the interrupt arrives whole and the old checkpoint stays intact."""
    torch = pytest.importorskip("torch")
    target = tmp_path / "checkpoint.pt"
    weights = {"w": torch.arange(8 * 1024 * 1024, dtype=torch.float32)}
    started = time.perf_counter()
    with atomic_path(target) as tmp:
        torch.save(weights, tmp)
    took = time.perf_counter() - started

    def interrupt(*_):
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise KeyboardInterrupt

    outcomes = []
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        for step in range(1, 9):
            signal.setitimer(signal.ITIMER_REAL, took * step / 8)
            try:
                with atomic_path(target) as tmp:
                    torch.save({"w": weights["w"] + step}, tmp)
                outcomes.append(step)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                outcomes.append("interrupted")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert "interrupted" in outcomes, outcomes
    # whole: one of the versions written (an interrupt may land just after the rename)
    offset = torch.load(target)["w"] - weights["w"]
    assert torch.equal(offset, torch.full_like(offset, offset[0]))
    saved = [o for o in outcomes if o != "interrupted"]
    assert max(saved, default=0) <= offset[0].item() <= 8
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
