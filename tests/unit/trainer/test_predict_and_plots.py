from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_trainer import plots
from mnist_trainer.predict import ImageError, load_digit


def test_a_dark_on_light_png_is_inverted_and_resized(tmp_path: Path) -> None:
    canvas = np.full((56, 56), 255, np.uint8)
    canvas[10:46, 26:30] = 0  # a black "1" on white paper, twice MNIST's size
    Image.fromarray(canvas).save(tmp_path / "one.png")
    digit = load_digit(tmp_path / "one.png")
    assert digit.shape == (28, 28)
    assert digit.dtype == np.uint8
    assert digit[14, 14] > 200  # the stroke is now bright, like MNIST
    assert digit[2, 2] < 30


def test_npy_in_unit_range_is_scaled(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.full((28, 28), 0.5, np.float32))
    assert int(load_digit(tmp_path / "d.npy")[0, 0]) == 127


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.npy", None, "shape (3, 3)"),
        ("d.txt", b"hello", "expected one of .png"),
        ("d.png", b"not a png", "not a readable image"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros((3, 3)))
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_digit(path)


def test_confusion_matrix_counts_pairs() -> None:
    counts = plots.confusion_matrix(np.array([0, 0, 1, 9]), np.array([0, 1, 1, 9]))
    assert counts.sum() == 4
    assert counts[0, 0] == 1
    assert counts[0, 1] == 1
    assert counts[9, 9] == 1
    assert np.trace(counts) == 3


def test_figures_render_to_png() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    probabilities = rng.dirichlet(np.ones(10), 200)
    images = rng.integers(0, 255, (200, 28, 28)).astype(np.uint8)
    for figure in (
        plots.confusion_matrix_figure(plots.confusion_matrix(labels, probabilities.argmax(axis=1))),
        plots.misclassified_figure(images, labels, probabilities),
    ):
        buffer = BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(buffer.getvalue()) > 5000
