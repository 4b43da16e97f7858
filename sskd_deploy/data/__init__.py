"""Datasets: the synthetic default world, readers for COCO / Cityscapes / image folders,
augmentations and validation. Everything here is numpy + Pillow; no torch."""
