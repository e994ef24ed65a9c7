"""Wall time of the same training with tracking off, with the trainer's tracking, and with naive logging.

The trainer's way: one batched, synchronous `log_metrics` per epoch. The naive way (the seed's): one
synchronous `log_metric` call per value per batch. Same seed, data subset, epochs, alternated in rounds.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import STACK_URL, median, save

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TRAIN_SAMPLES = 20_000
EPOCHS = 2
BATCH_SIZE = 128


def main() -> None:
    import keras
    import mlflow

    from mnist_trainer import data, tracking
    from mnist_trainer.model import build_model

    class NaivePerBatchLogger(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            for key, value in (logs or {}).items():
                mlflow.log_metric(f"batch_{key}", float(value), step=batch)

    dataset = data.load_npz(os.environ["MNIST_NPZ"])
    splits = data.make_splits(
        dataset, batch_size=BATCH_SIZE, seed=0, validation_fraction=0.1, max_train_samples=TRAIN_SAMPLES
    )
    mlflow.set_tracking_uri(STACK_URL)
    mlflow.set_experiment("bench-tracking-overhead")

    def fit(callbacks: list[Any]) -> float:
        model = build_model(1e-3, seed=0)
        started = time.perf_counter()
        model.fit(splits.train, validation_data=splits.validation, epochs=EPOCHS, callbacks=callbacks, verbose=0)
        return time.perf_counter() - started

    fit([])  # warm-up: graph tracing and the pipeline cache, paid once by every mode alike
    times: dict[str, list[float]] = {"off": [], "per_epoch_batched": [], "naive_per_batch": []}
    for round_number in range(ROUNDS):
        times["off"].append(fit([]))
        with mlflow.start_run(run_name=f"per-epoch-{round_number}"):
            times["per_epoch_batched"].append(fit([tracking.epoch_logger()]))
        with mlflow.start_run(run_name=f"naive-{round_number}"):
            times["naive_per_batch"].append(fit([NaivePerBatchLogger()]))
        print(f"bench: round {round_number + 1}/{ROUNDS}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    base = median(times["off"])
    result = {
        "setup": {"train_samples": TRAIN_SAMPLES, "epochs": EPOCHS, "batch_size": BATCH_SIZE, "rounds": ROUNDS},
        "seconds_median": {mode: round(median(values), 3) for mode, values in times.items()},
        "overhead_percent": {mode: round(100 * (median(values) / base - 1), 2) for mode, values in times.items()},
        "raw_seconds": times,
    }
    print(f"bench: tracking overhead (median of {ROUNDS}): {result['overhead_percent']}")
    save("tracking_overhead", result)


if __name__ == "__main__":
    main()
