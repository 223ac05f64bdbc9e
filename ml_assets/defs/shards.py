"""A dataset version as WebDataset shards: what training streams when the snapshot is too big
for memory or disk (``source: shards`` in a kind's training config)."""

import dagster as dg
from pydantic import Field

from ml_assets.data.shards import FOLDER as SHARDS  # home.export_dir(SHARDS, version)
from ml_assets.defs.datasets import FROM_ANNOTATIONS, load_version
from ml_assets.defs.exports import tables_version
from ml_assets.defs.resources import MLAssetsHome


class ShardsConfig(dg.Config):
    samples_per_shard: int = Field(default=1000, gt=0, description="Most images in one shard")
    max_shard_bytes: int = Field(
        default=256 * 2**20, gt=0, description="Most bytes in one shard (a new one starts after)"
    )


@dg.asset(
    **FROM_ANNOTATIONS,
    kinds={"webdataset"},
    description="The version's images and annotations as WebDataset tar shards (image bytes "
    "plus a JSON record per image) with index.json: shard names, sample counts, sha256.",
)
def webdataset_shards(
    context: dg.AssetExecutionContext, config: ShardsConfig, home: MLAssetsHome
) -> dg.MaterializeResult:
    from ml_assets.data.shards import write_shards

    version = context.partition_key
    folder = home.export_dir(SHARDS, version)
    index = write_shards(
        load_version(home, version),
        folder,
        samples_per_shard=config.samples_per_shard,
        max_shard_bytes=config.max_shard_bytes,
        overwrite=True,
    )
    return dg.MaterializeResult(
        data_version=tables_version(
            home, version, f"{SHARDS}-{config.samples_per_shard}-{config.max_shard_bytes}"
        ),
        metadata={
            "shards": len(index["shards"]),
            "samples": index["samples"],
            "annotations": index["annotations"],
            "bytes": index["bytes"],
            "path": dg.MetadataValue.path(str(folder)),
        },
    )
