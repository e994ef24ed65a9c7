from __future__ import annotations

import numpy as np

from mnist_trainer.data import to_model_input
from mnist_trainer.model import build_model
from tests.unit.conftest import patterned_digits


def test_model_maps_images_to_class_probabilities() -> None:
    model = build_model(learning_rate=1e-3, seed=0)
    probabilities = model.predict(np.zeros((3, 28, 28, 1), np.float32), verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_training_steps_lower_the_loss() -> None:
    images, labels = patterned_digits(256, seed=0)
    x, y = to_model_input(images), labels.astype(np.int32)
    model = build_model(learning_rate=3e-3, seed=0)
    before = float(model.evaluate(x, y, verbose=0)[0])
    for _ in range(5):
        model.train_on_batch(x, y)
    after = float(model.evaluate(x, y, verbose=0)[0])
    assert after < before * 0.9, (before, after)


def test_the_seed_makes_the_initial_weights_repeat() -> None:
    first, second, other = (build_model(1e-3, seed).get_weights()[0] for seed in (5, 5, 6))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
