from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mnist_trainer import data


def index_images(count: int) -> np.ndarray:
    """Images whose first two pixels spell their own index, so a batch tells where each image came from."""
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(count) // 256, np.arange(count) % 256
    return images


def indices_of(batch_images: np.ndarray) -> list[int]:
    pixels = np.rint(batch_images[:, 0, :2, 0] * 255).astype(int)
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


def mnist_with_indices(train: int = 1000, test: int = 100) -> data.Mnist:
    return data.Mnist(
        x_train=index_images(train),
        y_train=(np.arange(train) % 10).astype(np.uint8),
        x_test=index_images(test),
        y_test=(np.arange(test) % 10).astype(np.uint8),
        source="memory",
    )


def all_indices(dataset: object) -> list[int]:
    return [i for images, _ in dataset for i in indices_of(images.numpy())]  # type: ignore[attr-defined]


def test_load_npz_reads_a_keras_format_file(small_npz: Path) -> None:
    mnist = data.load_npz(small_npz)
    assert mnist.x_train.shape == (600, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.y_test.shape == (200,) and mnist.y_test.dtype == np.uint8
    assert mnist.source == str(small_npz.resolve())


def test_load_npz_accepts_a_channel_axis(tmp_path: Path) -> None:
    images = np.zeros((4, 28, 28, 1), np.uint8)
    labels = np.arange(4, dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    assert data.load_npz(tmp_path / "c.npz").x_train.shape == (4, 28, 28)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 32, 32), np.uint8)}, "shape (4, 32, 32)"),
        ({"y_train": np.zeros(5, np.uint8)}, "expected (4,) to match the images"),
        ({"y_train": np.full(4, 10, np.uint8)}, "integer classes 0..9"),
        ({"y_train": np.zeros(4, np.float32)}, "integer classes 0..9"),
        ({"x_train": np.full((4, 28, 28), 300, np.int32)}, "pixel values 0..255"),
        ({"x_train": np.zeros((0, 28, 28), np.uint8), "y_train": np.zeros(0, np.uint8)}, "with n > 0"),
    ],
)
def test_load_npz_rejects_wrong_content(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    valid = {
        "x_train": np.zeros((4, 28, 28), np.uint8),
        "y_train": np.zeros(4, np.uint8),
        "x_test": np.zeros((2, 28, 28), np.uint8),
        "y_test": np.zeros(2, np.uint8),
    }
    np.savez(tmp_path / "bad.npz", **{**valid, **arrays})  # type: ignore[arg-type]
    with pytest.raises(data.DataError, match=re.escape(message)):
        data.load_npz(tmp_path / "bad.npz")


def test_load_npz_names_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "half.npz", x_train=np.zeros((4, 28, 28), np.uint8), y_train=np.zeros(4, np.uint8))
    with pytest.raises(data.DataError, match="missing arrays x_test, y_test"):
        data.load_npz(tmp_path / "half.npz")


def test_load_npz_rejects_missing_corrupt_and_truncated_files(tmp_path: Path, small_npz: Path) -> None:
    with pytest.raises(data.DataError, match="no such file"):
        data.load_npz(tmp_path / "absent.npz")
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(data.DataError, match=r"not a readable \.npz file"):
        data.load_npz(tmp_path / "garbage.npz")
    (tmp_path / "cut.npz").write_bytes(small_npz.read_bytes()[:5000])
    with pytest.raises(data.DataError, match=r"not a readable \.npz file"):
        data.load_npz(tmp_path / "cut.npz")


def test_to_model_input_scales_and_adds_a_channel() -> None:
    batch = data.to_model_input(np.array([[[0, 255] + [0] * 26] * 28], np.uint8))
    assert batch.shape == (1, 28, 28, 1) and batch.dtype == np.float32
    assert batch.min() == 0.0 and batch.max() == 1.0


def test_splits_have_the_right_shapes_sizes_and_no_overlap() -> None:
    splits = data.make_splits(mnist_with_indices(), batch_size=32, seed=1, validation_fraction=0.1)
    assert (splits.train_size, splits.validation_size, splits.test_size) == (900, 100, 100)
    images, labels = next(iter(splits.train))
    assert images.shape == (32, 28, 28, 1) and images.dtype.name == "float32"
    assert labels.dtype.name == "int32"
    train, validation = all_indices(splits.train), all_indices(splits.validation)
    assert len(train) == 900 and len(validation) == 100
    assert set(train).isdisjoint(validation) and set(train) | set(validation) == set(range(1000))
    # The test split is evaluated in file order and never shuffled.
    assert all_indices(splits.test) == list(range(100))


def test_the_seed_fixes_the_split_and_the_shuffle_order() -> None:
    def first_epoch(seed: int) -> tuple[list[int], list[int]]:
        splits = data.make_splits(mnist_with_indices(), batch_size=50, seed=seed, validation_fraction=0.2)
        return all_indices(splits.train), all_indices(splits.validation)

    assert first_epoch(7) == first_epoch(7)
    assert first_epoch(7) != first_epoch(8)
    assert first_epoch(7)[0] != sorted(first_epoch(7)[0])  # shuffled, not file order


def test_max_train_samples_takes_a_seeded_subset() -> None:
    splits = data.make_splits(
        mnist_with_indices(), batch_size=16, seed=3, validation_fraction=0.25, max_train_samples=200
    )
    assert (splits.train_size, splits.validation_size) == (150, 50)
    assert len(all_indices(splits.train)) == 150


def test_a_split_that_leaves_nothing_to_train_on_is_refused() -> None:
    with pytest.raises(data.DataError, match="nothing to train on"):
        data.make_splits(mnist_with_indices(), batch_size=16, seed=3, validation_fraction=0.5, max_train_samples=1)


def test_tfds_source_reads_mnist_through_tensorflow_datasets() -> None:
    import tensorflow_datasets as tfds

    # TFDS' own offline fake: the real loading code runs, only the bytes are generated.
    with tfds.testing.mock_data(num_examples=20):
        mnist = data.load(data.TFDS_SOURCE)
    assert mnist.x_train.shape == (20, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.y_train.max() < 10
    assert mnist.source == data.TFDS_CATALOG_URL
