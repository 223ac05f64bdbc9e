"""webdataset_shards[version] through Dagster, shards streamed from the local S3 API server
(moto on loopback, as the S3 tests), and the classifier trained from shards."""

import uuid

import dagster as dg
import numpy as np
import pytest
from servers import moto_server

from ml_assets.data.coco import read_coco
from ml_assets.data.shards import INDEX, shard_urls, stream_samples, write_shards
from ml_assets.defs import datasets
from ml_assets.defs.partitions import dataset_versions
from ml_assets.defs.shards import SHARDS, webdataset_shards
from ml_assets.train.classifier import (
    ClassifierConfig,
    ShardCrops,
    build_loader,
    extract_crops,
    train_classifier,
    training_inputs,
)
from ml_assets.train.device import select_device


def test_the_shards_asset_writes_every_image_with_an_index(landed):
    landing, home = landed
    with dg.instance_for_test() as instance:
        key = home.store.register(landing)
        instance.add_dynamic_partitions(dataset_versions.name, [key])
        result = dg.materialize(
            [datasets.raw_dataset, datasets.annotations, webdataset_shards],
            partition_key=key,
            resources={"home": home},
            instance=instance,
            run_config={"ops": {"webdataset_shards": {"config": {"samples_per_shard": 4}}}},
        )
        assert result.success
        (event,) = result.asset_materializations_for_node("webdataset_shards")
        meta = {k: v.value for k, v in event.metadata.items()}
    folder = home.export_dir(SHARDS, key)
    assert meta["shards"] == 3 and meta["samples"] == 12 and meta["path"] == str(folder)
    assert meta["bytes"] == sum(p.stat().st_size for p in folder.glob("*.tar"))
    assert (folder / INDEX).is_file()


@pytest.fixture
def s3(monkeypatch):
    import boto3

    with moto_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAH11BSHARDSKEY000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "h11b-shards-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3")
        bucket = f"shards-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        yield client, bucket


def test_a_loader_streams_shards_from_s3(s3, tiny_sample, tmp_path):
    import torch

    client, bucket = s3
    ds = read_coco(tiny_sample)
    folder = tmp_path / "shards"
    write_shards(ds, folder, samples_per_shard=4)
    for path in folder.iterdir():
        client.put_object(Bucket=bucket, Key=f"v1/{path.name}", Body=path.read_bytes())
    location = f"s3://{bucket}/v1"
    urls = shard_urls(location)
    assert urls[0] == f"s3://{bucket}/v1/shard-000000.tar" and len(urls) == 3
    local = {s.key: s.image for s in stream_samples(shard_urls(folder))}
    loader = torch.utils.data.DataLoader(
        stream_samples(urls, shuffle_buffer=5, seed=3),
        batch_size=None,
        num_workers=2,
        collate_fn=lambda s: s,
    )
    remote = {s.key: s.image for s in loader}
    assert remote == local  # every sample, byte-identical, each once

    # The classifier's training loader on the same S3 shards: the crops the snapshot gives.
    config = ClassifierConfig(img_size=24, batch_size=4, augment="none", source="shards")
    ids = sorted(ds.categories["category_id"])
    images = ds.images["image_id"].tolist()
    train, _ = training_inputs(ds, images, [], ids, config.model_copy(update={"shards": location}))
    assert isinstance(train, ShardCrops)
    loader, reseed = build_loader(train, config, augment=True)
    reseed(0)
    streamed = sorted(
        (int(y), x.numpy().tobytes()) for xs, ys in loader for x, y in zip(xs, ys, strict=True)
    )
    snapshot = extract_crops(ds, images, ids, size=24)
    expected = sorted(
        (int(y), np.ascontiguousarray(x.transpose(2, 0, 1)).tobytes())
        for x, y in zip(snapshot.images, snapshot.labels, strict=True)
    )
    assert streamed == expected


def test_the_classifier_trains_from_shards_and_resumes(tiny_sample, tmp_path):
    ds = read_coco(tiny_sample)
    write_shards(ds, tmp_path / "shards", samples_per_shard=3)
    ids = sorted(ds.categories["category_id"])
    config = ClassifierConfig(
        epochs=2, img_size=24, batch_size=8, source="shards", shuffle_buffer=8, seed=2
    )
    inputs = {"webdataset_shards": tmp_path / "shards"}
    images = ds.images["image_id"].tolist()
    train, validation = training_inputs(ds, images[:8], images[8:], ids, config, inputs)
    assert len(validation.labels) == len(extract_crops(ds, images[8:], ids, 24).labels)
    cpu = select_device("cpu")
    model, history, resumed = train_classifier(
        train, len(ids), config, cpu, tmp_path / "run", validation=validation
    )
    assert resumed is None and history["epoch"].tolist() == [1, 2]
    assert np.isfinite(history["train_loss"]).all() and "val_macro_f1" in history
    more = config.model_copy(update={"epochs": 3})
    _, history, resumed = train_classifier(
        train, len(ids), more, cpu, tmp_path / "run", validation=validation
    )
    assert resumed == 3 and history["epoch"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="source 'shards' needs a shard location"):
        training_inputs(ds, images, [], ids, config)
