"""Classification metrics on integer labels (numpy only)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def classification_report(
    y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], n_classes: int
) -> dict[str, float]:
    """Accuracy and macro-F1 (classes absent from both truth and prediction are ignored)."""
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (y_true, y_pred), 1)
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    return {
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
    }
