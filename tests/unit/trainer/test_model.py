from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mnist_trainer.data import to_model_input
from mnist_trainer.model import build_model
from tests.unit.trainer.conftest import patterned_digits


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


def _compute_dtypes(model: object) -> dict[str, str]:
    return {layer.name: layer.compute_dtype for layer in model.layers}  # type: ignore[attr-defined]


def test_mixed_precision_computes_convolutions_in_float16_and_returns_float32_probabilities() -> None:
    import keras

    model = build_model(1e-3, seed=0, mixed_precision=True)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 2
    assert all(layer.compute_dtype == "float16" and layer.variable_dtype == "float32" for layer in convs)
    assert _compute_dtypes(model)["probabilities"] == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    images, _ = patterned_digits(4, seed=0)
    probabilities = model.predict(to_model_input(images), verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert keras.mixed_precision.global_policy().name == "float32", "the policy leaked out of build_model"
    assert set(_compute_dtypes(build_model(1e-3, seed=0)).values()) == {"float32"}


def test_a_float32_build_ignores_a_policy_left_behind_by_someone_else() -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(1e-3, seed=0, mixed_precision=False)
        assert keras.mixed_precision.global_policy().name == "mixed_float16", "the caller's policy is restored"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert set(_compute_dtypes(model).values()) == {"float32"}
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_a_mixed_precision_model_loads_back_with_its_optimizer_state(tmp_path: Path) -> None:
    import keras

    images, labels = patterned_digits(64, seed=0)
    model = build_model(1e-3, seed=0, mixed_precision=True)
    model.train_on_batch(to_model_input(images), labels.astype(np.int32))
    model.save(tmp_path / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns when it drops optimizer variables it cannot place
        loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    assert loaded.layers[0].compute_dtype == "float16" and loaded.layers[-1].compute_dtype == "float32"
    np.testing.assert_allclose(
        loaded.predict(to_model_input(images[:3]), verbose=0), model.predict(to_model_input(images[:3]), verbose=0)
    )


def test_xla_is_used_when_asked_for_and_trains_on_the_cpu_too() -> None:
    images, labels = patterned_digits(64, seed=0)
    model = build_model(3e-3, seed=0, xla=True)
    assert model.jit_compile is True
    assert build_model(3e-3, seed=0).jit_compile is False
    loss = float(model.train_on_batch(to_model_input(images), labels.astype(np.int32))[0])
    assert np.isfinite(loss)
