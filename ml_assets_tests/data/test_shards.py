"""WebDataset shards: every sample back byte-identical, an index that tells the truth, streaming
with shuffle buffers and per-worker splitting, clear errors."""

import hashlib
import tarfile

import orjson
import pytest

from ml_assets.data.coco import read_coco
from ml_assets.data.shards import (
    INDEX,
    read_image,
    shard_urls,
    stream_samples,
    verify_shards,
    write_shards,
)


@pytest.fixture(scope="module")
def dataset(tiny_sample):
    return read_coco(tiny_sample)


@pytest.fixture(scope="module")
def shards(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards") / "webdataset"
    return folder, write_shards(dataset, folder, samples_per_shard=5)


def test_every_sample_comes_back_byte_identical_with_its_annotations(dataset, shards):
    folder, index = shards
    samples = {s.record["image_id"]: s for s in stream_samples(shard_urls(folder))}
    assert sorted(samples) == sorted(dataset.images["image_id"])
    for row in dataset.images.itertuples():
        sample = samples[row.image_id]
        assert sample.image == dataset.image_path(row.file_name).read_bytes()
        assert sample.key == f"{row.image_id:012d}" and "." not in sample.key
        assert (sample.record["width"], sample.record["height"]) == (row.width, row.height)
        expected = dataset.annotations[dataset.annotations["image_id"] == row.image_id]
        got = sample.record["annotations"]
        assert [a["annotation_id"] for a in got] == expected["annotation_id"].tolist()
        boxes = [[a["x"], a["y"], a["w"], a["h"]] for a in got]
        assert boxes == expected[["x", "y", "w", "h"]].to_numpy().tolist()  # floats exact
        assert sample.record["categories"] == {str(k): v for k, v in dataset.category_names.items()}
        assert read_image(sample).size == (row.width, row.height)


def test_the_index_counts_and_hashes_every_shard(dataset, shards):
    folder, index = shards
    assert index == orjson.loads((folder / INDEX).read_bytes())
    names = sorted(p.name for p in folder.glob("*.tar"))
    assert [s["name"] for s in index["shards"]] == names
    assert [s["samples"] for s in index["shards"]] == [5, 5, 2]  # 12 images, 5 per shard
    assert index["samples"] == len(dataset.images)
    assert index["annotations"] == len(dataset.annotations)
    for shard in index["shards"]:
        data = (folder / shard["name"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
        assert shard["bytes"] == len(data)
        with tarfile.open(folder / shard["name"]) as tar:  # a plain tar any tool reads
            keys = {m.name.split(".")[0] for m in tar.getmembers()}
        assert len(keys) == shard["samples"]
    assert index["bytes"] == sum(s["bytes"] for s in index["shards"])
    assert verify_shards(folder) == []


def test_a_changed_shard_is_found_and_the_same_data_gives_the_same_bytes(dataset, shards, tmp_path):
    folder, index = shards
    again = write_shards(dataset, tmp_path / "again", samples_per_shard=5)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in index["shards"]]
    first = tmp_path / "again" / index["shards"][0]["name"]
    first.write_bytes(first.read_bytes()[:-1] + b"x")
    (problem,) = verify_shards(tmp_path / "again")
    assert first.name in problem and "sha256" in problem


def test_writing_is_atomic_and_a_missing_image_names_its_file(dataset, tmp_path):
    broken = type(dataset)(dataset.images, dataset.annotations, dataset.categories, tmp_path)
    with pytest.raises(ValueError, match=r"cannot read image \d+"):
        write_shards(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(tmp_path.glob(".out*"))
    write_shards(dataset, tmp_path / "out")
    with pytest.raises(FileExistsError):
        write_shards(dataset, tmp_path / "out")


def test_shuffling_is_seeded_and_loses_nothing(shards):
    folder, _ = shards
    urls = shard_urls(folder)
    plain = [s.key for s in stream_samples(urls)]
    one = [s.key for s in stream_samples(urls, shuffle_buffer=4, seed=1)]
    assert sorted(one) == sorted(plain) and one != plain
    assert one == [s.key for s in stream_samples(urls, shuffle_buffer=4, seed=1)]
    assert one != [s.key for s in stream_samples(urls, shuffle_buffer=4, seed=2)]


def test_loader_workers_and_ranks_each_read_their_own_shards(shards, monkeypatch):
    import torch

    folder, index = shards
    urls = shard_urls(folder)
    loader = torch.utils.data.DataLoader(
        stream_samples(urls), batch_size=None, num_workers=2, collate_fn=lambda s: s
    )
    keys = [s.key for s in loader]
    assert sorted(keys) == sorted(s.key for s in stream_samples(urls))  # each sample once
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append({s.url for s in stream_samples(urls)})
    assert per_rank[0].isdisjoint(per_rank[1]) and per_rank[0] | per_rank[1] == set(urls)


def test_a_shard_folder_without_index_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="index.json: cannot read the shard index"):
        shard_urls(tmp_path)
