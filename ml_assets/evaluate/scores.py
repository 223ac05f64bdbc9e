"""What scoring a model on held-out images gives, the same for every kind."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Scores:
    """What a kind's ``score`` returns for one held-out set.

    ``metrics`` are flat numbers (the report averages them across folds); ``per_class`` is
    indexed by class name; ``predictions`` one row per scored object or detection; ``extra``
    JSON-able details the baseline and the report need (a confusion matrix, class names);
    ``plots`` PNG bytes by name.
    """

    metrics: dict[str, float]
    per_class: pd.DataFrame
    predictions: pd.DataFrame
    extra: dict = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict)
