"""ml_assets: a Dagster code location from labelled image data to an evaluated, promotable model."""

from ml_assets.runtime import configure as _configure

_configure()
