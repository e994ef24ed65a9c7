"""Classify digit images with a registered model: `trainer predict --model models:/mnist@champion a.png`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_trainer.data import IMAGE_SIDE, to_model_input

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


class ImageError(ValueError):
    """The image cannot be read as a digit; the message says why in one line."""


@dataclass(frozen=True)
class Prediction:
    path: str
    digit: int
    probability: float


def load_digit(path: str | Path) -> np.ndarray:
    """Any image or .npy of one digit -> uint8 (28, 28), white digit on black like MNIST."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            pixels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ImageError(f"{path}: not a readable .npy file ({error})") from error
        pixels = np.squeeze(pixels)
        if pixels.shape != (IMAGE_SIDE, IMAGE_SIDE):
            raise ImageError(f"{path}: shape {pixels.shape}, expected ({IMAGE_SIDE}, {IMAGE_SIDE})")
        if pixels.dtype != np.uint8:
            # Accept [0, 1] floats as well as 0..255 values.
            scale = 255.0 if float(np.max(pixels)) <= 1.0 else 1.0
            pixels = np.clip(pixels * scale, 0, 255).astype(np.uint8)
        return pixels
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: expected one of {', '.join(IMAGE_SUFFIXES)} or .npy")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = image.convert("L").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from error
    pixels = np.asarray(gray, dtype=np.uint8)
    # Photos and drawings are usually dark ink on light paper; MNIST is the other way round.
    if pixels.mean() > 127:
        pixels = 255 - pixels
    return pixels


def predict(model_uri: str, paths: list[str]) -> list[Prediction]:
    import mlflow

    from mnist_trainer.tracking import quiet_progress_bars_off_a_terminal

    quiet_progress_bars_off_a_terminal()
    images = np.stack([load_digit(path) for path in paths])
    model = mlflow.pyfunc.load_model(model_uri)
    probabilities = np.asarray(model.predict(to_model_input(images)))
    return [
        Prediction(path, int(row.argmax()), float(row.max())) for path, row in zip(paths, probabilities, strict=True)
    ]
