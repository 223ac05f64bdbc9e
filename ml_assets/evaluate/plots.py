"""Figures as PNG bytes and Markdown that embeds them (the Dagster UI renders data URIs)."""

from __future__ import annotations

import base64
import io

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _figure().close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def confusion_png(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """A confusion matrix (rows: truth, columns: prediction) with counts in the cells."""
    plt = _figure()
    size = 1.2 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        colour = "white" if value > threshold else "black"
        ax.text(j, i, str(int(value)), ha="center", va="center", color=colour)
    return png_bytes(fig)
