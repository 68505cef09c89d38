"""A run's test predictions, one row per test image (reports/test_predictions.csv, and one file per shift of
eval.shifts under reports/shift_predictions/): written by the run, read back by the comparison's paired
statistics. The format's writer and reader, and where a run keeps them, side by side."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipelines.data.loaders import DataBundle


def artifact_path(shift: str = "") -> str:
    """The run's clean test predictions, or those under the shift of that name (`gaussian_noise_0.1`)."""
    return f"reports/shift_predictions/{shift}.csv" if shift else "reports/test_predictions.csv"


def predictions_csv(test_predictions: tuple[np.ndarray, np.ndarray], p_true: np.ndarray, data: DataBundle) -> str:
    """One row per test image, in the test split's order: its position there, its row in the dataset, the
    true and predicted class (number and name) and the probability the model gave the true class
    (a FitResult's test_predictions and test_p_true)."""
    (y_true, y_pred), names = test_predictions, data.class_names
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "row", "true", "predicted", "true_class", "predicted_class", "p_true"])
    for i, (row, true, predicted, p) in enumerate(zip(data.indices["test"].tolist(), y_true.tolist(),
                                                        y_pred.tolist(), p_true.tolist(), strict=True)):
        writer.writerow([i, row, true, predicted, names[true], names[predicted], f"{p:.6g}"])
    return out.getvalue()


def outcomes(predictions: str) -> np.ndarray:
    """Whether each test image was classified right, in the test split's order, from predictions_csv's text."""
    table = sorted(csv.DictReader(io.StringIO(predictions)), key=lambda r: int(r["index"]))
    return np.array([r["true"] == r["predicted"] for r in table], dtype=bool)
