"""A full disk loses nothing: ingest, a version's objects, a training checkpoint, a published
model and a report that run out of space fail with one line naming the place, leave no part of
what they were writing, and succeed once space is freed (training resumes from the last whole
checkpoint). Each test runs on a small filesystem of its own: tmpfs where this machine lets the
tests mount one, else a loop-mounted ext4 image; skipped with the reason where neither works."""

import errno
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from pipelines import fit_and_save

from ml_assets.cli import main
from ml_assets.data.atomic import OutOfSpaceError, out_of_space, write_bytes
from ml_assets.data.coco import read_coco
from ml_assets.data.store import Store
from ml_assets.evaluate.classification import classification_metrics
from ml_assets.evaluate.report import write_report
from ml_assets.train.classifier import CHECKPOINT, ClassifierConfig
from ml_assets.train.device import select_device
from ml_assets.train.evaluation import summarize_folds
from ml_assets.train.kinds.image_classifier import IMAGE_CLASSIFIER
from ml_assets.train.runs import publish

CPU = select_device("cpu")
# "no space left on device writing PLACE (needs about N MB; free M MB): free space and run again"
SIZES = r" \((?:needs about (?P<needs>[\d.,]+) MB; )?free (?P<free>[\d.,]+) MB\)"


def shown(n: int):
    """``n`` bytes as the message rounds them to megabytes."""
    return pytest.approx(n / 1e6, rel=0.01, abs=0.005)


def full_message(place: Path) -> str:
    return (
        rf"no space left on device writing {re.escape(str(place))}{SIZES}: free space and run again"
    )


def mount_commands(folder: Path, megabytes: int) -> dict[str, str]:
    image = folder.with_suffix(".img")
    return {
        "tmpfs": f"mount -t tmpfs -o size={megabytes}m tmpfs '{folder}'",
        "loop ext4": f"truncate -s {megabytes}M '{image}' && mkfs.ext4 -q -F -m 0 '{image}' "
        f"&& mount -o loop '{image}' '{folder}'",
    }


@pytest.fixture
def small_fs(tmp_path):
    """make(megabytes) -> a folder that is the root of a filesystem that small, unmounted after
    the test."""
    mounted = []

    def make(megabytes: int) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        reasons = []
        for name, command in mount_commands(folder, megabytes).items():
            run = subprocess.run(command, shell=True, capture_output=True, text=True)
            if run.returncode == 0:
                mounted.append(folder)
                return folder
            said = (run.stderr or run.stdout).strip().splitlines()
            reasons.append(f"{name}: {said[0] if said else f'exit {run.returncode}'}")
        pytest.skip(f"cannot mount a small filesystem here ({'; '.join(reasons)})")

    yield make
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave: int) -> Path:
    """One file that takes all but about ``leave`` bytes of ``folder``'s filesystem; removing it
    frees the space."""
    filler = folder / "filler"
    size = shutil.disk_usage(folder).free - leave
    assert size > 0, f"{folder} has less than {leave} bytes free"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
    return filler


def hidden(root: Path) -> list[Path]:
    """Temporaries an atomic write would leave: every hidden name below ``root``."""
    return [p for p in root.rglob(".*") if p.name != "lost+found"]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_ingest_into_a_full_landing_says_so_leaves_nothing_and_works_once_space_is_freed(
    home, small_fs, tiny_sample
):
    fs = small_fs(2)
    landing = fs / "landing"
    landing.mkdir()
    size = sum(p.stat().st_size for p in tiny_sample.rglob("*") if p.is_file())
    filler = fill(fs, leave=size // 2)
    command = ["ingest", str(tiny_sample), "--name", "shapes", "--landing", str(landing)]

    out = CliRunner().invoke(main, command)
    assert out.exit_code == 1
    (line,) = out.output.splitlines()
    found = re.fullmatch("error: " + full_message(landing / "shapes"), line)
    assert found, line
    assert float(found["needs"]) == shown(size)
    assert float(found["free"]) == shown(shutil.disk_usage(fs).free)
    assert list(landing.iterdir()) == []  # no half dataset, no hidden temporary

    filler.unlink()
    out = CliRunner().invoke(main, command)
    assert out.exit_code == 0, out.output
    assert tree(landing / "shapes") == tree(tiny_sample)
    assert hidden(fs) == []


def test_a_version_stored_on_a_full_disk_leaves_no_snapshot_and_is_stored_once_space_is_freed(
    small_fs, tmp_path, tiny_sample
):
    fs = small_fs(2)
    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample, landing)
    store = Store(fs / "store")
    key = store.register(landing)
    size = sum(e.size for e in store.manifest(key))
    filler = fill(fs, leave=size // 2)

    with pytest.raises(OutOfSpaceError) as failed:
        store.ingest(key)
    found = re.fullmatch(full_message(store.root / "objects"), str(failed.value))
    assert found, str(failed.value)
    assert 0 < float(found["needs"]) <= size / 1e6 + 0.01  # what is left to store
    assert not (store.version_dir(key) / "files").exists() and hidden(store.root) == []
    for obj in (store.root / "objects").rglob("*"):  # what was stored is whole
        if obj.is_file():
            assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.name

    filler.unlink()
    stats = store.ingest(key)
    assert stats.files == len(store.manifest(key)) and stats.reused_objects > 0
    assert tree(store.files_dir(key)) == tree(landing)
    assert hidden(store.root) == []


def test_a_checkpoint_on_a_full_disk_keeps_the_last_one_and_the_next_run_resumes_from_it(
    small_fs, tiny_sample
):
    import torch

    fs = small_fs(32)
    run_dir = fs / "run"
    ds = read_coco(tiny_sample)
    ids = ds.images["image_id"].tolist()
    config = ClassifierConfig(model_name="test_resnet", img_size=32, epochs=2, batch_size=8)
    checkpoint = run_dir / CHECKPOINT

    def fill_after_first(epoch, epochs, row):
        if epoch == 1:  # room for half a checkpoint: the second one cannot be written
            fill(fs, leave=checkpoint.stat().st_size // 2)

    with pytest.raises(OutOfSpaceError) as failed:
        IMAGE_CLASSIFIER.fit(ds, ids[:8], ids[8:], config, CPU, run_dir, fill_after_first)
    found = re.fullmatch(full_message(checkpoint), str(failed.value))
    assert found, str(failed.value)
    assert float(found["needs"]) == shown(checkpoint.stat().st_size)
    assert hidden(run_dir) == []
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["state"]["epoch"] == 1  # the first checkpoint, whole

    (fs / "filler").unlink()
    seen = []
    fit, model_dir = fit_and_save(
        IMAGE_CLASSIFIER, ds, ids[:8], ids[8:], config, CPU, run_dir, lambda e, n, r: seen.append(e)
    )
    assert fit.resumed_from == 2 and seen == [2]
    assert fit.history["epoch"].tolist() == [1, 2]
    assert IMAGE_CLASSIFIER.load(model_dir, CPU) is not None


def report_of_two_folds() -> dict:
    records = []
    for fold, (truth, guess) in enumerate([([0, 0, 1, 1], [0, 0, 1, 1]), ([0, 1], [0, 0])]):
        m = classification_metrics(np.array(truth), np.array(guess), ["a", "b"])
        metrics = {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "samples")}
        extra = {"classes": ["a", "b"], "confusion": m["confusion"].tolist()}
        per_class = m["per_class"].reset_index().to_dict("records")
        records.append({"fold": fold, "metrics": metrics, "extra": extra, "per_class": per_class})
    return summarize_folds(IMAGE_CLASSIFIER, "abcdef123456", records)


def test_a_model_or_report_written_to_a_full_disk_keeps_the_old_one_whole(small_fs, tmp_path):
    fs = small_fs(4)
    staged, older = tmp_path / "staged", tmp_path / "older"
    write_bytes(staged / "weights.bin", os.urandom(1_000_000))
    write_bytes(staged / "model.json", b"{}")
    write_bytes(older / "weights.bin", b"old")
    model_dir, report_dir = fs / "models" / "fold0", fs / "reports" / "abcdef123456"
    report = report_of_two_folds()
    publish(older, model_dir)
    write_report(report_dir, report, {})
    before = tree(report_dir)
    filler = fill(fs, leave=500_000)

    with pytest.raises(OutOfSpaceError) as failed:
        publish(staged, model_dir)
    found = re.fullmatch(full_message(model_dir), str(failed.value))
    assert found and float(found["needs"]) == 1.0, str(failed.value)
    with pytest.raises(OutOfSpaceError, match=full_message(report_dir)):
        write_report(report_dir, report, {"big_plot": os.urandom(1_000_000)})
    assert tree(model_dir) == {"weights.bin": b"old"} and tree(report_dir) == before
    assert hidden(fs) == []

    filler.unlink()
    publish(staged, model_dir)
    write_report(report_dir, report, {"big_plot": b"png"})
    assert tree(model_dir) == tree(staged)
    assert orjson.loads((report_dir / "report.json").read_bytes())["version"] == "abcdef123456"
    assert hidden(fs) == []


# Without a small filesystem: what the helper makes of each kind of error.


def test_a_spent_quota_is_one_line_and_other_errors_pass_unchanged(tmp_path):
    temporary = tmp_path / ".x.tmp"
    temporary.write_bytes(b"part")
    with (
        pytest.raises(OutOfSpaceError) as failed,
        out_of_space(tmp_path / "x", 2_000_000, temporary),
    ):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert str(failed.value) == (
        f"disk quota exceeded writing {tmp_path / 'x'} (needs about 2.0 MB): free space or raise "
        "the quota and run again"
    )
    assert failed.value.errno == errno.EDQUOT and not temporary.exists()

    for error in (FileNotFoundError("gone"), RuntimeError("a bug"), KeyboardInterrupt()):
        temporary.write_bytes(b"part")
        with pytest.raises(type(error)) as passed, out_of_space(tmp_path / "x", 1, temporary):
            raise error
        assert passed.value is error and not temporary.exists()


def test_a_yolo_checkpoint_on_a_full_disk_keeps_the_last_one_and_the_next_run_resumes(
    small_fs, tiny_sample
):
    """ultralytics writes last.pt in place: the detector's trainer writes it aside instead, so
    a full disk leaves the previous checkpoint whole and the next run resumes from it."""
    from ml_assets.train.kinds.yolo_detector import YOLO_DETECTOR
    from ml_assets.train.yolo import YoloConfig

    fs = small_fs(96)
    run_dir = fs / "run"
    ds = read_coco(tiny_sample)
    ids = ds.images["image_id"].tolist()
    config = YoloConfig(epochs=2, imgsz=64, batch=4)
    last = run_dir / "train" / "weights" / "last.pt"

    def fill_after_first(epoch, epochs, row):
        if epoch == 1:  # room for half a checkpoint: the second one cannot be written
            fill(fs, leave=last.stat().st_size // 2)

    with pytest.raises(OutOfSpaceError) as failed:
        YOLO_DETECTOR.fit(ds, ids[:8], ids[8:], config, CPU, run_dir, fill_after_first)
    assert str(last) in str(failed.value) and "no space left on device" in str(failed.value)
    assert hidden(run_dir) == []
    (fs / "filler").unlink()
    fit = YOLO_DETECTOR.fit(ds, ids[:8], ids[8:], config, CPU, run_dir)
    assert fit.resumed_from == 2 and fit.history["epoch"].tolist() == [1, 2]
