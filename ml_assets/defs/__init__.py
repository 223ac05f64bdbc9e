"""The Dagster layer: thin wrappers that call ml_assets.data, .train and .evaluate."""
