"""The keras-io MNIST convnet: small enough for a CPU, above 99 % test accuracy within 15 epochs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mnist_trainer.data import IMAGE_SIDE, NUM_CLASSES

if TYPE_CHECKING:
    import keras

CONV_FILTERS = (32, 64)
KERNEL_SIZE = (3, 3)
POOL_SIZE = (2, 2)
DROPOUT_RATE = 0.5


def build_model(
    learning_rate: float, seed: int, *, mixed_precision: bool = False, xla: bool = False, dropout: float = DROPOUT_RATE
) -> keras.Model:
    """The compiled convnet; `mixed_precision` computes in float16 (weights stay float32), `xla` JIT-compiles steps."""
    import keras

    # Seeds Python, NumPy and TF at once, so weights and dropout masks repeat from run to run.
    keras.utils.set_random_seed(seed)
    # Layers take the global policy when they are created and keep it; set it for this build only, so that
    # nothing built later in the same process (another run, a test) inherits float16 by accident.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    try:
        layers = [keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1), name="image")]
        for filters in CONV_FILTERS:
            layers += [
                keras.layers.Conv2D(filters, KERNEL_SIZE, activation="relu"),
                keras.layers.MaxPooling2D(POOL_SIZE),
            ]
        layers += [
            keras.layers.Flatten(),
            keras.layers.Dropout(dropout),
            # float32 whatever the policy: a float16 softmax loses the small probabilities the loss takes the
            # log of, and the served model keeps returning float32 probabilities.
            keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probabilities"),
        ]
        model = keras.Sequential(layers, name="mnist_convnet")
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        if mixed_precision:
            # Keras would wrap it itself, but a model loaded back (`trainer upload`) would then get a plain Adam
            # and drop the saved optimizer state: the Sequential config's policy is not restored on load.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            # Integer labels: no one-hot copy of the data set in memory.
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=xla,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model
