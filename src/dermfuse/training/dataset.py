"""`ArrayDataset`: the rows `dermfuse.training.loop.fit` trains on, held in arrays."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ArrayDataset"]


class ArrayDataset(Dataset):
    """Images, metadata and labels held in arrays; a memmap stays on disk (one image is
    read per item).

    images: uint8 (N, H, W, 3); meta: float32 (N, D), D may be 0; labels: int64 (N,).
    Item i: (image uint8 tensor (3, H, W) after ``transform``, meta float32 (D,), label int),
    and with ``soft`` (N, C) teacher probabilities (distillation) the row's soft target last.
    """

    def __init__(self, images: np.ndarray, meta: np.ndarray, labels: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 soft: np.ndarray | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        meta = np.asarray(meta, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if meta.ndim != 2 or len(meta) != len(images):
            raise ValueError(f"meta: expected ({len(images)}, D), got {meta.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels: expected ({len(images)},), got {labels.shape}")
        if soft is not None:
            soft = np.asarray(soft, dtype=np.float32)
            if soft.ndim != 2 or len(soft) != len(images):
                raise ValueError(f"soft: expected ({len(images)}, C), got {soft.shape}")
        self.images, self.meta, self.labels, self.transform, self.soft = images, meta, labels, transform, soft

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple:
        image = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1).contiguous()  # (3, H, W)
        if self.transform is not None:
            image = self.transform(image)
        item = (image, torch.from_numpy(self.meta[i]), int(self.labels[i]))
        return item if self.soft is None else item + (torch.from_numpy(self.soft[i]),)
