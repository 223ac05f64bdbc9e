"""WebDataset shards of a dataset version: tar files that stream, written and read by webdataset.

A shard folder holds ``shard-000000.tar``, ``shard-000001.tar``... written by webdataset's own
``ShardWriter`` (at most ``samples_per_shard`` samples or ``max_shard_bytes`` bytes each) and
``index.json``: every shard's name, sample count, size and sha256, plus the totals and the
categories. One sample per image: its file bytes unchanged under the file's extension
(``png``, ``jpg``...) and a ``json`` record (image id, file name, width, height, the image's
annotations with boxes in absolute pixels, ``categories`` by id and ``image`` naming the image's
extension). Keys are the zero-padded image id: webdataset splits names at the first dot, so a
key never holds one.

Reading streams samples from local shard paths or ``s3://`` URLs (boto3, which honours
``AWS_ENDPOINT_URL`` and the other AWS variables, so MinIO and moto work without settings), any
other URL through webdataset's ``gopen`` (``pipe:``, ``http(s)://``). Shards are split per rank
(``split_by_node``) and per loader worker (``split_by_worker``) and samples go through a
shuffle buffer, so memory holds the buffer, never the dataset.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from ml_assets.data.atomic import atomic_dir
from ml_assets.data.store import hash_file, is_url
from ml_assets.data.tables import Dataset

FOLDER = "webdataset"  # a version's shards: the folder under the version
INDEX = "index.json"
PATTERN = "shard-%06d.tar"
ANNOTATION_FIELDS = ("annotation_id", "category_id", "x", "y", "w", "h", "area", "iscrowd")


@dataclass(frozen=True)
class Sample:
    """One streamed image: its key, the image file's bytes and its JSON record."""

    key: str
    image: bytes
    record: dict
    url: str  # the shard it came from


def sample_record(row, annotations, categories: dict[int, str], ext: str) -> dict:
    """The JSON record of one image: what a training loader needs without the tables."""
    records = []
    for a in annotations.itertuples(index=False):
        record = {f: _plain(getattr(a, f)) for f in ANNOTATION_FIELDS}
        segmentation = getattr(a, "segmentation", None)
        if isinstance(segmentation, list | dict) and segmentation:
            record["segmentation"] = segmentation
        records.append(record)
    return {
        "image_id": int(row.image_id),
        "file_name": str(row.file_name),
        "width": int(row.width),
        "height": int(row.height),
        "image": ext,
        "annotations": records,
        "categories": {str(k): v for k, v in categories.items()},
    }


def _plain(value):
    """numpy scalars to Python numbers (orjson writes both; comparisons read plain ones)."""
    return value.item() if hasattr(value, "item") else value


def write_shards(
    ds: Dataset,
    folder: Path,
    samples_per_shard: int = 1000,
    max_shard_bytes: int = 256 * 2**20,
    overwrite: bool = False,
) -> dict:
    """Write ``ds`` (its images and annotations) as WebDataset shards into ``folder``, atomically:
    the folder appears whole, with its ``index.json``, or not at all. Returns the index."""
    import webdataset as wds

    if samples_per_shard < 1 or max_shard_bytes < 1:
        raise ValueError("samples_per_shard and max_shard_bytes must be positive")
    categories = {int(k): str(v) for k, v in ds.category_names.items()}
    by_image = dict(tuple(ds.annotations.groupby("image_id", sort=False)))
    empty = ds.annotations.iloc[:0]
    counts: dict[str, int] = {}
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        writer = None
        try:
            for row in ds.images.sort_values("image_id").itertuples(index=False):
                sample = image_sample(ds, row, by_image.get(row.image_id, empty), categories)
                if writer is None:
                    writer = wds.ShardWriter(
                        str(tmp / PATTERN),
                        maxcount=samples_per_shard,
                        maxsize=max_shard_bytes,
                        verbose=0,
                        encoder=False,
                        mtime=0,  # same data, same shard bytes
                    )
                writer.write(sample)
                name = Path(writer.fname).name
                counts[name] = counts.get(name, 0) + 1
        finally:
            if writer is not None:
                writer.close()
        index = shard_index(tmp, counts, len(ds.annotations), categories)
        (tmp / INDEX).write_bytes(orjson.dumps(index, option=orjson.OPT_INDENT_2))
    return index


def image_sample(ds: Dataset, row, annotations, categories: dict[int, str]) -> dict:
    """One image's sample: its key, its file's bytes under its extension and its JSON record."""
    path = ds.image_path(row.file_name)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read image {row.image_id}: {err}") from err
    ext = path.suffix.lower().lstrip(".") or "bin"
    if ext in ("json", "__key__"):
        raise ValueError(f"{path}: image {row.image_id} has an unusable extension")
    record = sample_record(row, annotations, categories, ext)
    return {"__key__": f"{int(row.image_id):012d}", ext: data, "json": orjson.dumps(record)}


def shard_index(
    folder: Path, counts: dict[str, int], annotations: int, categories: dict[int, str]
) -> dict:
    """The index of the shards in ``folder`` (``counts``: samples per shard name): each shard's
    size and sha256, the totals and the categories."""
    shards = [
        {
            "name": name,
            "samples": count,
            "bytes": (folder / name).stat().st_size,
            "sha256": hash_file(folder / name),
        }
        for name, count in counts.items()
    ]
    return {
        "format": "webdataset",
        "samples": sum(counts.values()),
        "annotations": annotations,
        "bytes": sum(s["bytes"] for s in shards),
        "categories": [{"id": k, "name": v} for k, v in sorted(categories.items())],
        "shards": shards,
    }


def read_index(location: str | Path) -> dict:
    """The ``index.json`` of a shard folder: a local folder or an ``s3://bucket/prefix``."""
    where = f"{str(location).rstrip('/')}/{INDEX}"
    try:
        with open_url(where) as handle:
            return orjson.loads(handle.read())
    except (OSError, orjson.JSONDecodeError) as err:
        raise ValueError(f"{where}: cannot read the shard index: {err}") from err


def shard_urls(location: str | Path) -> list[str]:
    """The shards of a shard folder (local or ``s3://``), in index order."""
    base = str(location).rstrip("/")
    return [f"{base}/{s['name']}" for s in read_index(location)["shards"]]


def verify_shards(folder: Path) -> list[str]:
    """Problems of a local shard folder against its index (missing shards, wrong sizes or
    hashes); empty when every shard is what the index says."""
    folder = Path(folder)
    problems = []
    for shard in read_index(folder)["shards"]:
        path = folder / shard["name"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != shard["bytes"] or hash_file(path) != shard["sha256"]:
            problems.append(f"{path}: size or sha256 differs from {INDEX}")
    return problems


def open_url(url: str):
    """A readable binary stream: a local path, ``s3://`` through boto3 (configured from the
    environment), anything else through webdataset's ``gopen`` (``pipe:``, ``http(s)://``)."""
    if is_url(url):
        from ml_assets.data.landing import default_client, s3_errors

        bucket, _, key = url[len("s3://") :].partition("/")
        with s3_errors(f"reading {url}"):
            return default_client().get_object(Bucket=bucket, Key=key)["Body"]
    if "://" in url or url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url)
    return open(url, "rb")


def _opened(source: Iterator[dict]) -> Iterator[dict]:
    """webdataset's url -> stream stage, opening with :func:`open_url`."""
    for item in source:
        yield {**item, "stream": open_url(item["url"])}


def _sample(raw: dict) -> Sample:
    url = raw.get("__url__", "")
    if "json" not in raw:
        raise ValueError(f"{url}: sample {raw.get('__key__')} has no json record")
    record = orjson.loads(raw["json"])
    ext = record.get("image", "")
    if ext not in raw:
        raise ValueError(f"{url}: sample {raw['__key__']} has no {ext or 'image'} file")
    return Sample(raw["__key__"], raw[ext], record, url)


def stream_samples(
    urls: Sequence[str],
    shuffle_buffer: int = 0,
    seed: int = 0,
    split: bool = True,
):
    """An iterable (a webdataset ``DataPipeline``, usable as a torch ``IterableDataset``) of
    :class:`Sample` from the shards at ``urls``. ``shuffle_buffer`` > 0 shuffles the shard
    order and then samples through a buffer of that many, seeded by ``seed`` (and the rank and
    worker); ``split`` gives each rank and each loader worker its own shards (use at least as
    many shards as ranks times workers, or some get none)."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander
    from webdataset.utils import pytorch_worker_info

    def shuffled(source):
        rank, _, worker, _ = pytorch_worker_info()
        local = seed * 1_000_003 + rank * 1009 + worker
        yield from wds.shuffle(shuffle_buffer, min(shuffle_buffer, 100), seed=local)(source)

    stages = [wds.SimpleShardList(list(urls), seed=seed if shuffle_buffer else None)]
    if split:
        stages += [wds.split_by_node, wds.split_by_worker]
    stages += [_opened, tar_file_expander, group_by_keys]
    if shuffle_buffer:
        stages.append(shuffled)
    stages.append(wds.map(_sample))
    return wds.DataPipeline(*stages)


def read_image(sample: Sample):
    """The sample's image as an RGB PIL image (the error names the shard and the sample)."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(sample.image)).convert("RGB")
    except OSError as err:
        raise ValueError(
            f"{sample.url}: cannot read the image of sample {sample.key}: {err}"
        ) from err
