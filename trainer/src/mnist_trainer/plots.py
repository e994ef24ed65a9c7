"""Pictures a person reads faster than tables: where the model confuses digits, and what it got wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mnist_trainer.data import NUM_CLASSES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISCLASSIFIED_SHOWN = 36
GRID_COLUMNS = 9


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """counts[true, predicted] over the 10 classes."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return counts


def _figure(width: float, height: float) -> Figure:
    # The object API, not pyplot: no global state and no display backend needed in a container.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def confusion_matrix_figure(counts: np.ndarray) -> Figure:
    figure = _figure(6.5, 5.5)
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    threshold = counts.max() / 2
    for true in range(NUM_CLASSES):
        for predicted in range(NUM_CLASSES):
            value = int(counts[true, predicted])
            if value:
                color = "white" if value > threshold else "black"
                axes.text(predicted, true, str(value), ha="center", va="center", color=color, fontsize=7)
    axes.set(
        xticks=range(NUM_CLASSES),
        yticks=range(NUM_CLASSES),
        xlabel="predicted",
        ylabel="true",
        title=f"Test set confusion matrix ({int(np.trace(counts))}/{int(counts.sum())} right)",
    )
    return figure


def misclassified_figure(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    """The most confidently wrong test digits, each titled 'true → predicted (p)'."""
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != labels)
    shown = wrong[np.argsort(-probabilities[wrong, predictions[wrong]])][:MISCLASSIFIED_SHOWN]
    rows = max(1, -(-len(shown) // GRID_COLUMNS))
    figure = _figure(GRID_COLUMNS * 1.1, rows * 1.3 + 0.4)
    figure.suptitle(f"{len(wrong)} misclassified test digits, most confident first", fontsize=10)
    for slot, index in enumerate(shown):
        axes = figure.add_subplot(rows, GRID_COLUMNS, slot + 1)
        axes.imshow(images[index], cmap="gray_r")
        axes.set_title(
            f"{labels[index]}→{predictions[index]} ({probabilities[index, predictions[index]]:.2f})", fontsize=7
        )
        axes.axis("off")
    return figure
