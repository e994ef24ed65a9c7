"""Synthetic MNIST-shaped data: no download, no services, and patterns a convnet learns in seconds."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SIDE = 28


def patterned_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a bright 6x6 block at a position of its own plus noise: learnable, unlike random pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, SIDE, SIDE)).astype(np.uint8)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[index, 2 + row * 12 : 8 + row * 12, 1 + col * 5 : 7 + col * 5] = 250
    return images, labels


def write_npz(path: Path, train: int, test: int, seed: int = 0) -> Path:
    x_train, y_train = patterned_digits(train, seed)
    x_test, y_test = patterned_digits(test, seed + 1)
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture
def small_npz(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "mnist.npz", train=600, test=200)


@pytest.fixture(autouse=True)
def _op_determinism_stays_in_its_test() -> Iterator[None]:
    """A run enables TF op determinism for its whole process (lineage.enable_determinism), and Keras then
    compiles no XLA: switch it off again so that tests running later in this process see TF's defaults."""
    yield
    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
