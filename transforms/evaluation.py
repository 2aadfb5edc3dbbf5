"""Evaluation metrics for the trained classifier, in numpy (no scikit-learn dependency).

This module owns the arithmetic only: given targets and predicted probabilities as arrays it
returns plain dicts that serialize to metrics.json. It reads and writes no files.
"""

from __future__ import annotations

import numpy as np


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    return _safe_div(2 * precision * recall, precision + recall)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return counts


def single_label_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
    y_true = np.asarray(y_true, np.int64).reshape(-1)
    y_pred = np.argmax(probabilities, axis=-1)
    counts = confusion_matrix(y_true, y_pred, len(class_names))
    tp = np.diag(counts)
    precision = _safe_div(tp, counts.sum(axis=0))
    recall = _safe_div(tp, counts.sum(axis=1))
    f1 = _f1(precision, recall)
    return {
        "rows": int(y_true.size),
        "accuracy": float(np.mean(y_true == y_pred)) if y_true.size else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(counts[i].sum()),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": counts.tolist(),
    }


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged.

    None when the class has no positive or no negative rows (the area is undefined).
    """
    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = int(y_true.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    values, inverse, tie_counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(tie_counts) - (tie_counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def multi_label_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str], threshold: float
) -> dict:
    """Micro/macro F1, per-class precision/recall/F1/ROC AUC, at the decision threshold."""
    y_true = np.asarray(y_true) >= 0.5
    y_pred = np.asarray(probabilities) >= threshold
    tp = (y_true & y_pred).sum(axis=0)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _f1(precision, recall)
    micro_p = _safe_div(tp.sum(), tp.sum() + fp.sum())
    micro_r = _safe_div(tp.sum(), tp.sum() + fn.sum())
    return {
        "rows": int(y_true.shape[0]),
        "threshold": threshold,
        "micro_f1": float(_f1(micro_p, micro_r)),
        "macro_f1": float(f1.mean()),
        "subset_accuracy": float(np.mean(np.all(y_true == y_pred, axis=1)))
        if y_true.shape[0]
        else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "roc_auc": roc_auc(y_true[:, i], probabilities[:, i]),
                "support": int(y_true[:, i].sum()),
            }
            for i, name in enumerate(class_names)
        },
    }
