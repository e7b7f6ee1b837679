"""Evaluation metrics: a confusion matrix for segmentation mIoU and per-image multi-label F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ERROR_KINDS", "ERROR_SHARE_OF", "ConfusionMatrix", "error_map", "multilabel_f1"]

# codes of ``error_map``: what went wrong at a pixel (0 = nothing)
ERROR_KINDS = {
    0: "correct",
    1: "false positive",  # foreground predicted where the truth is background
    2: "false negative",  # true foreground predicted as background
    3: "wrong class",  # true foreground predicted as another foreground class
    4: "unlabelled",  # the prediction is not a class id (e.g. 255 in a training label)
}
# the pixels each kind of error can occur in: its share is counted against them (error_shares)
ERROR_SHARE_OF = {1: "background pixels", 2: "item pixels", 3: "item pixels", 4: "pixels"}


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor; torch is not needed otherwise
        array = array.detach().cpu().numpy()
    return np.asarray(array)


class ConfusionMatrix:
    """Pixel confusion matrix over ``num_classes`` classes (background included).

    ``matrix[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p``. Pixels whose
    ground truth is ``ignore_index`` are skipped. A prediction that is not a class id (for example
    255 in a pseudo label with ignored regions) counts as an error for the ground-truth class:
    it lands in ``unpredicted[g]``, which enlarges that class's union without being any class's
    false positive. ``update(..., skip_pred_ignore=True)`` skips such pixels instead.

    IoU of class ``c`` is ``TP / (TP + FP + FN)``; it is NaN when the class appears neither in
    the ground truth nor in the predictions, and :meth:`miou` is the mean over the other classes.
    (The authors' ``utils/evaluate.py`` averages only over classes present in the ground truth;
    the two agree whenever every class occurs in the ground truth, as on PASCAL VOC val.)
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.unpredicted = np.zeros(self.num_classes, dtype=np.int64)

    @classmethod
    def from_counts(cls, matrix: Any, unpredicted: Any = None, ignore_index: int = 255) -> ConfusionMatrix:
        """A matrix holding saved counts: ``matrix`` ``(C, C)`` and ``unpredicted`` ``(C,)``
        (e.g. an image's entry in ``python -m core.evaluate --per-image``)."""
        counts = np.asarray(matrix, dtype=np.int64)
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
            raise ValueError(f"a confusion matrix is square, got shape {counts.shape}")
        out = cls(counts.shape[0], ignore_index)
        out.matrix[:] = counts
        if unpredicted is not None:
            out.unpredicted[:] = np.asarray(unpredicted, dtype=np.int64)
        return out

    def reset(self) -> None:
        self.matrix[:] = 0
        self.unpredicted[:] = 0

    def update(self, pred: Any, gt: Any, skip_pred_ignore: bool = False) -> ConfusionMatrix:
        """Add one prediction / ground-truth pair of any (equal) shape, e.g. ``(H, W)`` or ``(B, H, W)``.

        Accepts NumPy arrays or torch tensors of integer class ids. Raises ValueError for a
        ground-truth value that is neither a class id nor ``ignore_index``.
        """
        pred = _to_numpy(pred).astype(np.int64, copy=False).ravel()
        gt = _to_numpy(gt).astype(np.int64, copy=False).ravel()
        if pred.shape != gt.shape:
            raise ValueError(f"pred has {pred.size} pixels but gt has {gt.size}")
        keep = gt != self.ignore_index
        if skip_pred_ignore:
            keep &= pred != self.ignore_index
        pred, gt = pred[keep], gt[keep]
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            bad = gt[(gt < 0) | (gt >= self.num_classes)][0]
            raise ValueError(
                f"ground truth holds {bad}, which is neither a class id below "
                f"{self.num_classes} nor the ignore index {self.ignore_index}"
            )
        is_class = (pred >= 0) & (pred < self.num_classes)
        n = self.num_classes
        self.matrix += np.bincount(gt[is_class] * n + pred[is_class], minlength=n * n).reshape(n, n)
        self.unpredicted += np.bincount(gt[~is_class], minlength=n)
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU ``(C,)`` float64; NaN for classes absent from both prediction and ground truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) + self.unpredicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is defined (NaN if none is)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly (NaN before any update)."""
        total = self.matrix.sum() + self.unpredicted.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def error_counts(self) -> dict[int, int]:
        """Pixels per kind of ``ERROR_KINDS`` (code -> count), the same kinds ``error_map`` paints:
        0 correct, 1 background predicted as a class, 2 a class predicted as background, 3 a class
        predicted as another class, 4 no class predicted (``unpredicted``)."""
        m = self.matrix
        return {
            0: int(np.trace(m)),
            1: int(m[0, 1:].sum()),
            2: int(m[1:, 0].sum()),
            3: int(m[1:, 1:].sum() - np.trace(m[1:, 1:])),
            4: int(self.unpredicted.sum()),
        }

    def error_shares(self) -> dict[str, float | None]:
        """The kinds of error of ``error_counts`` as shares of the pixels they can occur in
        (``ERROR_SHARE_OF``), keyed by their ``ERROR_KINDS`` name: false positives of the true
        background pixels, false negatives and wrong classes of the true item pixels, unlabelled of
        all pixels. None where there are no such pixels."""
        counts, m, missed = self.error_counts(), self.matrix, self.unpredicted
        pixels = {
            "background pixels": int(m[0].sum() + missed[0]),
            "item pixels": int(m[1:].sum() + missed[1:].sum()),
            "pixels": int(m.sum() + missed.sum()),
        }
        return {
            ERROR_KINDS[kind]: counts[kind] / pixels[of] if pixels[of] else None
            for kind, of in ERROR_SHARE_OF.items()
        }

    def class_shares(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each true class's pixels went, and how much each class is predicted.

        ``shares (C, C + 1)``: row ``t`` is the share of class ``t``'s true pixels predicted as each
        class, then as none (``unpredicted``); rows sum to 1, NaN for a class absent from the truth.
        ``area (C,)``: pixels predicted as a class over its true pixels (1 when it is predicted as
        often as it occurs, above 1 when the class takes other classes' pixels; NaN when absent
        from the truth)."""
        counts = np.concatenate([self.matrix, self.unpredicted[:, None]], 1).astype(np.float64)
        true = counts.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            shares = np.where(true[:, None] > 0, counts / np.maximum(true, 1)[:, None], np.nan)
            area = np.where(true > 0, self.matrix.sum(0) / np.maximum(true, 1), np.nan)
        return shares, area

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of ``other`` (same classes) into this matrix in place; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix
        self.unpredicted += other.unpredicted
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        result = ConfusionMatrix(self.num_classes, self.ignore_index)
        return result.merge(self).merge(other)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all processes of ``torch.distributed`` (no-op when not initialised)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        counts = np.concatenate([self.matrix.ravel(), self.unpredicted])
        buffer = torch.from_numpy(counts).to(device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        counts = buffer.cpu().numpy()
        n = self.num_classes
        self.matrix[:] = counts[: n * n].reshape(n, n)
        self.unpredicted[:] = counts[n * n :]
        return self

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"miou", "pixel_accuracy", "per_class": {name: iou}, "errors": error_shares()}`` with
        plain floats (NaN -> None, so the result is valid JSON). Without names the classes are keyed
        by their id."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")

        def plain(value: float) -> float | None:
            return None if np.isnan(value) else float(value)

        return {
            "miou": plain(self.miou()),
            "pixel_accuracy": plain(self.pixel_accuracy()),
            "per_class": {name: plain(v) for name, v in zip(names, self.iou())},
            "errors": self.error_shares(),
        }


def error_map(pred: Any, gt: Any, ignore_index: int = 255) -> np.ndarray:
    """Per pixel, which kind of error ``pred`` makes against ``gt`` (equal shapes, class ids):
    a code of ``ERROR_KINDS`` as uint8, and ``ignore_index`` where the truth is ignored. Every
    pixel that is not 0 here is an off-diagonal count of ``ConfusionMatrix.update(pred, gt)``."""
    pred = _to_numpy(pred).astype(np.int64, copy=False)
    gt = _to_numpy(gt).astype(np.int64, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ in shape")
    out = np.zeros(gt.shape, dtype=np.uint8)
    wrong = pred != gt
    out[wrong & (gt == 0)] = 1
    out[wrong & (gt > 0) & (pred == 0)] = 2
    out[wrong & (gt > 0) & (pred > 0)] = 3
    out[wrong & (pred == ignore_index)] = 4
    out[gt == ignore_index] = ignore_index
    return out


def multilabel_f1(pred: Any, target: Any, empty_score: float = 1.0) -> float:
    """Per-image F1 of multi-label predictions, averaged over images.

    pred, target: ``(B, C-1)`` (or ``(C-1,)`` for one image) 0/1 arrays or tensors (anything
    non-zero is positive; threshold logits before calling). Per image
    ``F1 = 2 TP / (2 TP + FP + FN)``. An image with no positive in either the target or the
    prediction scores ``empty_score`` (1.0: predicting "nothing" for an image with nothing is
    right; sklearn's ``f1_score``, used by the authors, returns 0 there). An image whose target
    is empty but whose prediction is not scores 0, as usual. Returns NaN for zero images.
    """
    pred = _to_numpy(pred) != 0
    target = _to_numpy(target) != 0
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    if pred.ndim == 1:
        pred, target = pred[None], target[None]
    if pred.shape[0] == 0:
        return float("nan")
    tp = (pred & target).sum(-1)
    denom = pred.sum(-1) + target.sum(-1)  # = 2 TP + FP + FN
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), empty_score)
    return float(f1.mean())
