"""The one record shape every dataset reader yields.

A reader turns its native format (COCO JSON, Cityscapes gtFine, a folder of images, the
synthetic generator's output) into a :class:`Dataset` of :class:`ImageRecord`. Annotation masks
are kept as compressed RLE so that thousands of records stay small; they are decoded on demand
with :meth:`ImageRecord.instances`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sskd_deploy.structures import RLE, Instances, rles_to_masks


@dataclass(frozen=True)
class Annotation:
    """One ground-truth (or pseudo-label) instance.

    ``category`` is the contiguous class index ``0..C-1`` (see :class:`CategorySet`);
    ``rle`` is a compressed COCO RLE with ``str`` counts and ``size == [height, width]``.
    """

    category: int
    rle: RLE
    iscrowd: bool = False
    score: float = 1.0


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    ``file_name`` is the path as written in the source (relative to the image root); ``path`` is
    the resolved absolute path, already checked to lie inside the root. ``annotations`` is
    ``None`` for an unlabeled image and a (possibly empty) tuple for a labeled one.
    """

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    annotations: tuple[Annotation, ...] | None = None

    @property
    def labeled(self) -> bool:
        return self.annotations is not None

    def instances(self) -> Instances:
        """Decode the annotations to an :class:`Instances` (empty for unlabeled images)."""
        anns = self.annotations or ()
        size = (self.height, self.width)
        if not anns:
            return Instances.empty(size)
        masks = rles_to_masks([a.rle for a in anns], self.height, self.width)
        return Instances(
            size,
            masks,
            np.array([a.category for a in anns], np.int64),
            np.array([a.score for a in anns], np.float32),
            np.array([a.iscrowd for a in anns], bool),
        )


@dataclass(frozen=True)
class CategorySet:
    """Class names in contiguous order and the source dataset's ids for each.

    Readers remap arbitrary source ids (COCO's 1..90 with gaps, Cityscapes' 24..33) to
    ``0..C-1``; ``source_ids`` maps back when writing predictions in the source's id space.
    """

    names: tuple[str, ...]
    source_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.source_ids):
            raise ValueError("CategorySet: names and source_ids differ in length")
        if len(set(self.source_ids)) != len(self.source_ids):
            raise ValueError("CategorySet: duplicate source ids")

    def __len__(self) -> int:
        return len(self.names)

    def index_of_source_id(self, source_id: int) -> int:
        return self.source_ids.index(source_id)

    def coco_categories(self) -> list[dict]:
        return [{"id": sid, "name": name} for sid, name in zip(self.source_ids, self.names)]


@dataclass(frozen=True)
class Dataset:
    """A split: its records, classes and where it came from (for error messages and hashes)."""

    name: str
    categories: CategorySet
    records: tuple[ImageRecord, ...]
    source: Path
    image_root: Path
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labeled(self) -> bool:
        return bool(self.records) and all(r.labeled for r in self.records)

    def subset(self, keep: list[int] | tuple[int, ...], name: str | None = None) -> Dataset:
        return Dataset(
            name or self.name,
            self.categories,
            tuple(self.records[i] for i in keep),
            self.source,
            self.image_root,
            dict(self.meta),
        )
