"""MNIST from TFDS or a Keras-format npz, and the tf.data pipelines fed to the model."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

    from mnist_trainer.config import TrainConfig

TFDS_SOURCE = "tfds"
TFDS_CATALOG_URL = "https://www.tensorflow.org/datasets/catalog/mnist"
NUM_CLASSES = 10
IMAGE_SIDE = 28
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """The data set cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class Mnist:
    """The raw arrays: images uint8 (n, 28, 28), labels uint8 (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


@dataclass(frozen=True)
class Splits:
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    train_size: int
    validation_size: int
    test_size: int


def _check_images(name: str, images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or len(images) == 0:
        raise DataError(f"{name} has shape {images.shape}, expected (n, {IMAGE_SIDE}, {IMAGE_SIDE}) with n > 0")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.number) or images.min() < 0 or images.max() > 255:
            raise DataError(f"{name} must hold pixel values 0..255, got dtype {images.dtype}")
        images = images.astype(np.uint8)
    return images


def _check_labels(name: str, labels: np.ndarray, count: int) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != count:
        raise DataError(f"{name} has shape {labels.shape}, expected ({count},) to match the images")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{name} must hold integer classes 0..{NUM_CLASSES - 1}")
    return labels.astype(np.uint8)


def load_npz(path: str | Path) -> Mnist:
    """Read and validate a Keras-format mnist.npz (the file `keras.datasets.mnist` downloads)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} (expected {', '.join(NPZ_KEYS)})")
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        # np.load raises any of these for a truncated or non-npz file; the type says nothing to a user.
        raise DataError(f"{path}: not a readable .npz file ({error})") from error
    x_train = _check_images(f"{path}:x_train", arrays["x_train"])
    x_test = _check_images(f"{path}:x_test", arrays["x_test"])
    return Mnist(
        x_train=x_train,
        y_train=_check_labels(f"{path}:y_train", arrays["y_train"], len(x_train)),
        x_test=x_test,
        y_test=_check_labels(f"{path}:y_test", arrays["y_test"], len(x_test)),
        source=str(path.resolve()),
    )


def _to_arrays(examples: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*examples, strict=True)
    return np.stack(images), np.asarray(labels)


def load_tfds(data_dir: str | None = None) -> Mnist:
    """Download (once, into data_dir) and read MNIST through TensorFlow Datasets."""
    import tensorflow_datasets as tfds

    try:
        # Not batch_size=-1: under TF 2.21 that aborts the process in TFDS' mock (std::length_error), and
        # iterating 70k small images costs only a few seconds.
        train, test = tfds.load("mnist", split=["train", "test"], as_supervised=True, data_dir=data_dir)
        (x_train, y_train), (x_test, y_test) = _to_arrays(tfds.as_numpy(train)), _to_arrays(tfds.as_numpy(test))
    except Exception as error:  # TFDS wraps network and disk errors in many types
        raise DataError(
            f"TFDS could not provide mnist ({type(error).__name__}: {error}); pass --data PATH.npz"
        ) from error
    return Mnist(
        x_train=_check_images("tfds:train", x_train),
        y_train=_check_labels("tfds:train labels", y_train, len(x_train)),
        x_test=_check_images("tfds:test", x_test),
        y_test=_check_labels("tfds:test labels", y_test, len(x_test)),
        source=TFDS_CATALOG_URL,
    )


def load(source: str, tfds_dir: str | None = None) -> Mnist:
    return load_tfds(tfds_dir) if source == TFDS_SOURCE else load_npz(source)


def load_for_training(options: TrainConfig, tfds_dir: str | None = None) -> Mnist:
    """The data a run's options name, refused when the options ask for more images than it has."""
    dataset = load(options.data, tfds_dir)
    if options.max_train_samples is not None and options.max_train_samples > len(dataset.x_train):
        raise DataError(
            f"--max-train-samples {options.max_train_samples} exceeds the {len(dataset.x_train)} training images"
        )
    return dataset


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 28, 28, 1) in [0, 1]: what the model and its signature take."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def make_splits(
    data: Mnist,
    *,
    batch_size: int,
    seed: int,
    validation_fraction: float,
    max_train_samples: int | None = None,
) -> Splits:
    """Hold out a seeded validation split from train; keep test for the final evaluation only."""
    import tensorflow as tf

    order = np.random.default_rng(seed).permutation(len(data.x_train))
    if max_train_samples is not None:
        order = order[:max_train_samples]
    validation_size = max(1, round(len(order) * validation_fraction))
    if validation_size >= len(order):
        raise DataError(f"{len(order)} training images leave nothing to train on after the validation split")
    validation_idx, train_idx = order[:validation_size], order[validation_size:]

    def batched(images: np.ndarray, labels: np.ndarray, *, shuffle: bool) -> tf.data.Dataset:
        # Whole batches are gathered and scaled at once from uint8 arrays (a quarter of float32's
        # memory traffic); only indices are shuffled, so no per-image work happens in the pipeline.
        images_u8, labels_i32 = tf.constant(images), tf.constant(labels.astype(np.int32))
        indices = tf.data.Dataset.range(len(images))
        if shuffle:
            indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)

        def gather(batch_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            batch = tf.cast(tf.gather(images_u8, batch_indices), tf.float32) / 255.0
            return batch[..., tf.newaxis], tf.gather(labels_i32, batch_indices)

        return (
            indices.batch(batch_size)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    return Splits(
        train=batched(data.x_train[train_idx], data.y_train[train_idx], shuffle=True),
        validation=batched(data.x_train[validation_idx], data.y_train[validation_idx], shuffle=False),
        test=batched(data.x_test, data.y_test, shuffle=False),
        train_size=len(train_idx),
        validation_size=validation_size,
        test_size=len(data.x_test),
    )
