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

    class Timed(keras.callbacks.Callback):
        """Delegates to a logging callback and adds up the time training waits on it: the overhead itself,
        without the run-to-run noise of whole fits."""

        def __init__(self, inner: keras.callbacks.Callback) -> None:
            super().__init__()
            self.inner, self.seconds = inner, 0.0

        def set_model(self, model: Any) -> None:
            self.inner.set_model(model)

        def _timed(self, hook: str, *args: Any) -> None:
            started = time.perf_counter()
            getattr(self.inner, hook)(*args)
            self.seconds += time.perf_counter() - started

        def on_train_begin(self, logs: Any = None) -> None:
            self._timed("on_train_begin", logs)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._timed("on_epoch_begin", epoch, logs)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self._timed("on_epoch_end", epoch, logs)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self._timed("on_train_batch_end", batch, logs)

        def on_train_end(self, logs: Any = None) -> None:
            self._timed("on_train_end", logs)

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

    def fit(callback: keras.callbacks.Callback | None) -> tuple[float, float]:
        """Wall time of fit, and the part of it spent waiting on the logging callback."""
        model = build_model(1e-3, seed=0)
        timed = Timed(callback) if callback else None
        started = time.perf_counter()
        model.fit(
            splits.train,
            validation_data=splits.validation,
            epochs=EPOCHS,
            callbacks=[timed] if timed else [],
            verbose=0,
        )
        return time.perf_counter() - started, timed.seconds if timed else 0.0

    fit(None)  # warm-up: graph tracing, paid once by every mode alike
    # System metrics as the stack's trainer records them (docker-compose.yml: sampled every 2 s).
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "2")
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    times: dict[str, list[float]] = {
        "off": [], "per_epoch_batched_async": [], "per_epoch_with_system_metrics": [], "naive_per_batch": []
    }  # fmt: skip
    waits: dict[str, list[float]] = {mode: [] for mode in times}
    for round_number in range(ROUNDS):
        for mode, callback in (
            ("off", None),
            ("per_epoch_batched_async", tracking.epoch_logger(EPOCHS)),
            ("per_epoch_with_system_metrics", tracking.epoch_logger(EPOCHS)),
            ("naive_per_batch", NaivePerBatchLogger()),
        ):
            if callback is None:
                wall, waited = fit(None)
            else:
                system_metrics = mode == "per_epoch_with_system_metrics"
                with mlflow.start_run(run_name=f"{mode}-{round_number}", log_system_metrics=system_metrics):
                    wall, waited = fit(callback)
            times[mode].append(wall)
            waits[mode].append(waited)
        print(f"bench: round {round_number + 1}/{ROUNDS}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    base = median(times["off"])
    result = {
        "setup": {"train_samples": TRAIN_SAMPLES, "epochs": EPOCHS, "batch_size": BATCH_SIZE, "rounds": ROUNDS},
        "seconds_median": {mode: round(median(values), 3) for mode, values in times.items()},
        "overhead_percent": {mode: round(100 * (median(values) / base - 1), 2) for mode, values in times.items()},
        # Time fit spent inside the logging callback, as a share of the untracked fit: the overhead with
        # the noise of whole fits taken out.
        "logging_wait_seconds_median": {mode: round(median(values), 4) for mode, values in waits.items()},
        "logging_wait_percent": {mode: round(100 * median(values) / base, 3) for mode, values in waits.items()},
        "raw_seconds": times,
    }
    print(
        f"bench: tracking overhead (median of {ROUNDS}): wall {result['overhead_percent']}, "
        f"waiting on logging {result['logging_wait_percent']} %"
    )
    save("tracking_overhead", result)


if __name__ == "__main__":
    main()
