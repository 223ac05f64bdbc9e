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


def reliability_png(table, title: str) -> bytes:
    """A reliability diagram from :func:`ml_assets.evaluate.classification.calibration`'s table:
    accuracy per confidence bin as bars against the diagonal of perfect calibration, with the
    share of samples per bin below."""
    plt = _figure()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lower, upper = table["lower"].to_numpy(), table["upper"].to_numpy()
    width, centre = upper - lower, (lower + upper) / 2
    filled = table["count"].to_numpy() > 0
    accuracy = np.where(filled, table["accuracy"].to_numpy(), 0.0)
    confidence = np.where(filled, table["confidence"].to_numpy(), 0.0)
    top.bar(centre, accuracy, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(
        centre,
        confidence - accuracy,
        bottom=accuracy,
        width=width,
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title)
    top.legend(loc="upper left", fontsize="small")
    share = table["count"].to_numpy() / max(int(table["count"].sum()), 1)
    bottom.bar(centre, share, width=width, edgecolor="black", color="grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share")
    return png_bytes(fig)


def pr_curves_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
    """Precision-recall curves, one line per class: ``curves[name] = (recall, precision)``."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (recall, precision) in curves.items():
        ax.plot(recall, precision, linewidth=1.5, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    if curves:
        ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def boxes_png(
    samples: list[dict],
    title: str,
    columns: int = 2,
    legend: str = "dashed green: truth, red: predicted",
) -> bytes:
    """A grid of images with their boxes. Each sample: ``image`` (H, W, 3 uint8), ``title``,
    ``truth`` [(x, y, w, h, label)] drawn dashed green and ``predicted``
    [(x, y, w, h, label)] drawn red with the label above the box; ``legend`` after the
    ``title`` (none when empty)."""
    from matplotlib.patches import Rectangle

    plt = _figure()
    rows = max(1, -(-len(samples) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples, strict=False):
        ax.imshow(sample["image"])
        ax.set_title(sample["title"], fontsize="small")
        for x, y, w, h, _ in sample["truth"]:
            ax.add_patch(
                Rectangle((x, y), w, h, fill=False, edgecolor="lime", linestyle="--", linewidth=1.5)
            )
        for x, y, w, h, label in sample["predicted"]:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1.2))
            ax.text(x, y, label, color="white", fontsize=6, va="bottom", backgroundcolor="red")
    fig.suptitle(f"{title} ({legend})" if legend else title, fontsize="small")
    return png_bytes(fig)


def histograms_png(values: dict[str, np.ndarray], title: str, xlabel: str) -> bytes:
    """Overlaid histograms over [0, 1], one per named set of values (a model against its
    baseline)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bins = np.linspace(0.0, 1.0, 21)
    for name, numbers in values.items():
        ax.hist(np.asarray(numbers, float), bins=bins, alpha=0.5, edgecolor="black", label=name)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    if values:
        ax.legend(loc="upper left", fontsize="small")
    return png_bytes(fig)
