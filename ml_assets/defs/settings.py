"""What the code location is built from: one frozen value, read from the environment only where
Dagster loads the location (``ml_assets.definitions``), never when a module is imported.

``build_defs(Settings(folds=3, kinds=("image_classifier",)))`` builds a location in a test or a
script without touching ``os.environ``. Dagster's processes (the code server, each run's worker,
the daemon) load the location again from their own environment, so a deployment sets the
variables below once for all of them (``deploy/k8s/values.yaml``; ``make`` for demo, train, ui).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    folds: int = 5  # k of the fold partitions (ML_ASSETS_FOLDS)
    kinds: tuple[str, ...] = ()  # model kinds built, names or short names; () every one
    owners: tuple[str, ...] = ("team:ml",)  # every asset's owners (emails or team:name)
    git_url: str = ""  # code references link to this Git host when set
    git_branch: str = "main"
    executor: str = ""  # "k8s": each step in its own pod (k8s_job_executor)
    device: str = "auto"  # the training_device resource's default
    retrain_cron: str = "0 3 * * 1"  # weekly_retraining, every Monday at 03:00 ...
    retrain_timezone: str = "UTC"  # ... in this IANA time zone
    max_runtime_hours: float = 12.0  # the dagster/max_runtime tag of training runs

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"the fold count must be at least 2, got {self.folds}")
        if self.max_runtime_hours <= 0:
            raise ValueError(f"the runtime limit must be positive, got {self.max_runtime_hours}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings the ``ML_ASSETS_*`` variables of ``env`` (default ``os.environ``) give;
        an unset or empty variable keeps the default. A bad value names its variable."""
        env = os.environ if env is None else env
        found = {}
        for field, (variable, parse) in ENVIRONMENT.items():
            text = env.get(variable, "").strip()
            if not text:
                continue
            try:
                found[field] = parse(text)
            except ValueError as error:
                raise ValueError(f"{variable}={text!r}: {error}") from None
        return cls(**found)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("expected an integer >= 2")
    return int(text)


def _executor(text: str) -> str:
    if text not in ("k8s", "default"):
        raise ValueError("expected k8s or default")
    return "" if text == "default" else text


ENVIRONMENT = {
    "folds": ("ML_ASSETS_FOLDS", _count),
    "kinds": ("ML_ASSETS_KINDS", _names),
    "owners": ("ML_ASSETS_OWNERS", _names),
    "git_url": ("ML_ASSETS_GIT_URL", str),
    "git_branch": ("ML_ASSETS_GIT_BRANCH", str),
    "executor": ("ML_ASSETS_EXECUTOR", _executor),
    "device": ("ML_ASSETS_DEVICE", str),
    "retrain_cron": ("ML_ASSETS_RETRAIN_CRON", str),
    "retrain_timezone": ("ML_ASSETS_RETRAIN_TIMEZONE", str),
    "max_runtime_hours": ("ML_ASSETS_MAX_RUNTIME_HOURS", float),
}
