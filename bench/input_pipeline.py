"""Images per second: the trainer's tf.data pipeline vs keras-io's `model.fit(numpy arrays)`."""

from __future__ import annotations

import os
import time

from bench.common import median, save

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BATCH_SIZE = 128


def main() -> None:
    from mnist_trainer import data
    from mnist_trainer.model import build_model

    dataset = data.load_npz(os.environ["MNIST_NPZ"])
    splits = data.make_splits(dataset, batch_size=BATCH_SIZE, seed=0, validation_fraction=0.1)
    x_all = data.to_model_input(dataset.x_train)
    y_all = dataset.y_train.astype("int32")

    def tf_data_epoch(model) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        model.fit(splits.train, validation_data=splits.validation, epochs=1, verbose=0)
        return splits.train_size / (time.perf_counter() - started)

    def numpy_epoch(model) -> float:  # type: ignore[no-untyped-def]
        # keras-io's mnist_convnet: arrays in, validation_split=0.1, Keras shuffles and batches.
        started = time.perf_counter()
        model.fit(x_all, y_all, batch_size=BATCH_SIZE, epochs=1, validation_split=0.1, verbose=0)
        return splits.train_size / (time.perf_counter() - started)

    def pipeline_alone() -> float:
        # The pipeline without the model: how many images/s it could feed, to see which side limits.
        started = time.perf_counter()
        for _ in splits.train:
            pass
        return splits.train_size / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {"tf_data": [], "numpy_fit": []}
    models = {"tf_data": build_model(1e-3, 0), "numpy_fit": build_model(1e-3, 0)}
    tf_data_epoch(models["tf_data"])  # warm-up epochs: tracing, the cache fill
    numpy_epoch(models["numpy_fit"])
    for round_number in range(ROUNDS):
        rates["tf_data"].append(tf_data_epoch(models["tf_data"]))
        rates["numpy_fit"].append(numpy_epoch(models["numpy_fit"]))
        print(
            f"bench: round {round_number + 1}/{ROUNDS}: "
            + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items())
        )
    feed_rate = median([pipeline_alone() for _ in range(3)])
    result = {
        "pipeline_alone_images_per_second": round(feed_rate),
        "setup": {"batch_size": BATCH_SIZE, "train_images": splits.train_size, "rounds": ROUNDS, "device": "CPU"},
        "images_per_second_median": {mode: round(median(values)) for mode, values in rates.items()},
        "ratio_tf_data_over_numpy": round(median(rates["tf_data"]) / median(rates["numpy_fit"]), 3),
        "epoch_seconds_tf_data": round(splits.train_size / median(rates["tf_data"]), 2),
        "raw_images_per_second": rates,
    }
    print(
        f"bench: input pipeline: {result['images_per_second_median']}, ratio {result['ratio_tf_data_over_numpy']}; "
        f"the pipeline alone feeds {feed_rate:.0f} img/s"
    )
    save("input_pipeline", result)


if __name__ == "__main__":
    main()
