"""Real data a test writes from a package: scikit-learn's handwritten digits."""

from pathlib import Path


def write_digits(root: Path, per_class: int | None = None) -> Path:
    """scikit-learn's handwritten digits (1,797 real 8x8 images, bundled with it) as an image
    folder, ``<digit>/<index>.png``; ``per_class`` keeps the first images of each digit."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    kept: dict[int, int] = {}
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        if per_class is not None and kept.get(int(target), 0) >= per_class:
            continue
        kept[int(target)] = kept.get(int(target), 0) + 1
        path = root / str(target) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(path)
    return root
