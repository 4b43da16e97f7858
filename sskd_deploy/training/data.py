"""Training samples: weak view, strong view and targets of one image, deterministic per (epoch, index).

A sample's randomness comes only from ``np.random.default_rng((seed, epoch, index))``, so a resumed
run sees exactly the augmentations an uninterrupted one would have, whatever the worker count.
Labeled samples carry ground truth or pseudo-labels (``Annotation`` records); unlabeled ones carry
none. :class:`PairedSet` zips a labeled and a pseudo-labeled set for the stages that train on both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from sskd_deploy.data.augment import StrongAugment, WeakAugment, copy_paste
from sskd_deploy.data.image_io import read_image
from sskd_deploy.data.records import Dataset, ImageRecord

Sample = dict[str, Any]


def instance_id_map(masks: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """int64 ``(H, W)``: 1 + index of the instance covering a pixel, 0 for background, -1 for padding."""
    ids = np.zeros(valid.shape, np.int64)
    for i, mask in enumerate(masks):
        ids[mask] = i + 1
    ids[~valid] = -1
    return ids


class SegmentationSamples(TorchDataset):
    """Views and targets of a dataset's records at the model's input size.

    ``__getitem__(i)`` returns ``{"weak": uint8 (3, H, W), "strong": uint8 (3, H, W), "labels": int64
    (N,), "masks": bool (N, H, W), "instance_ids": int64 (H, W) (all -1 when the record has no
    labels or ``ground_truth`` is off, as for pseudo-labels), "image_id": int}``. Crowd regions
    are dropped from the targets. With ``strong=False`` (no pixel contrastive term) there is no
    ``"strong"`` key: the photometric view is most of a sample's cost and nothing would use it.
    """

    def __init__(
        self, *, dataset: Dataset, input_size: tuple[int, int], seed: int,
        scale_range: tuple[float, float] = (0.75, 1.25), hflip_prob: float = 0.5, ground_truth: bool = True,
        strong: bool = True, copy_paste: float = 0.0,
    ) -> None:
        self.records: tuple[ImageRecord, ...] = dataset.records
        self.weak = WeakAugment(output_size=tuple(input_size), scale_range=tuple(scale_range), hflip_prob=hflip_prob)
        self.strong = StrongAugment() if strong else None
        self.copy_paste = copy_paste  # probability of pasting instances of another image of the set
        self.seed = seed
        self.epoch = 0
        # Pseudo-labels are targets, not truth: their instance ids must not score L_pxl's false negatives.
        self.ground_truth = ground_truth

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        instances = record.instances()
        keep_gt = ~instances.iscrowd
        masks, labels = instances.masks[keep_gt], instances.labels[keep_gt]
        weak, view_masks, keep, valid = self.weak(read_image(record.path), masks, rng)
        view_masks, labels = view_masks[keep], labels[keep]
        if self.copy_paste > 0 and rng.random() < self.copy_paste:
            weak, view_masks, labels = copy_paste(weak, view_masks, labels, valid, self._source_view(rng), rng)
        if record.labeled and self.ground_truth:
            ids = instance_id_map(view_masks, valid)
        else:
            ids = np.full(valid.shape, -1, np.int64)
        sample = {
            "weak": _chw(weak),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "masks": torch.from_numpy(view_masks),
            "instance_ids": torch.from_numpy(ids),
            "image_id": record.image_id,
        }
        if self.strong is not None:  # made from the weak view, so pixel (r, c) is the same scene point
            sample["strong"] = _chw(self.strong(weak, rng, valid))
        return sample


    def _source_view(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Another image of the set (drawn from ``rng``) under its own weak geometry, for copy-paste."""
        record = self.records[int(rng.integers(len(self.records)))]
        instances = record.instances()
        keep_gt = ~instances.iscrowd
        image, masks, keep, valid = self.weak(read_image(record.path), instances.masks[keep_gt], rng)
        return image, masks[keep], instances.labels[keep_gt][keep], valid


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class PairedSet(TorchDataset):
    """Item ``i`` = labeled sample ``i mod L`` and pseudo-labeled sample ``i mod U``.

    The length is the larger of the two, so an epoch visits every image of the bigger set once and
    cycles the smaller one. Returns ``{"l": Sample, "u": Sample}``.
    """

    def __init__(self, *, labeled: SegmentationSamples, unlabeled: SegmentationSamples, seed: int) -> None:
        self.labeled, self.unlabeled, self.seed = labeled, unlabeled, seed

    def set_epoch(self, epoch: int) -> None:
        self.labeled.set_epoch(epoch)
        self.unlabeled.set_epoch(epoch)

    def __len__(self) -> int:
        return max(len(self.labeled), len(self.unlabeled))

    def __getitem__(self, index: int) -> Sample:
        return {"l": self.labeled[index % len(self.labeled)], "u": self.unlabeled[index % len(self.unlabeled)]}


def collate_samples(samples: list[Sample]) -> Sample:
    """Stack images, keep per-image targets as lists (instance counts differ); recurse into pairs."""
    if "l" in samples[0]:
        return {key: collate_samples([s[key] for s in samples]) for key in ("l", "u")}
    batch = {
        "weak": torch.stack([s["weak"] for s in samples]),
        "instance_ids": torch.stack([s["instance_ids"] for s in samples]),
        "targets": [{"labels": s["labels"], "masks": s["masks"]} for s in samples],
        "image_ids": [s["image_id"] for s in samples],
    }
    if "strong" in samples[0]:
        batch["strong"] = torch.stack([s["strong"] for s in samples])
    return batch
