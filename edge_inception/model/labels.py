"""Class names: ImageNet-1k (shipped in the package) or the names a fine-tuned checkpoint carries."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

from ..names import is_number


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    name: str


@functools.cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    text = resources.files("edge_inception").joinpath("data/imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        index, wnid, name = line.split("\t")
        rows.append(ImageNetClass(int(index), wnid, name))
    return tuple(rows)


def class_names(num_classes: int, names: list[str] | None = None) -> list[str]:
    """Names for ``num_classes`` outputs: the given ones, ImageNet's for 1000 classes, else ``class_<i>``."""
    if names is not None and len(names) == num_classes:
        return list(names)
    if num_classes == 1000:
        return [c.name for c in imagenet_classes()]
    return [f"class_{i}" for i in range(num_classes)]


def imagenet_folder_index(folder_name: str) -> int | None:
    """Map an ImageFolder class folder named by synset id (n01440764) or class index (0..999) to an index."""
    if is_number(folder_name) and int(folder_name) < 1000:
        return int(folder_name)
    for c in imagenet_classes():
        if c.wnid == folder_name:
            return c.index
    return None
