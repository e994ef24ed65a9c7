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


def build_model(learning_rate: float, seed: int) -> keras.Model:
    import keras

    # Seeds Python, NumPy and TF at once, so weights and dropout masks repeat from run to run.
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1), name="image")]
    for filters in CONV_FILTERS:
        layers += [keras.layers.Conv2D(filters, KERNEL_SIZE, activation="relu"), keras.layers.MaxPooling2D(POOL_SIZE)]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dropout(DROPOUT_RATE),
        keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"),
    ]
    model = keras.Sequential(layers, name="mnist_convnet")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        # Integer labels: no one-hot copy of the data set in memory.
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
