"""What TensorFlow op determinism costs in training speed, and what it buys: the same weights twice.

Each measurement is a fresh process (op determinism is process-wide and cannot be turned off cleanly in TF),
training the trainer's model with the trainer's pipeline on a seeded MNIST subset, on and off alternated in
rounds. Besides the time it records the test accuracy and loss, so the report shows whether two runs with the
same settings repeated each other exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import median, save

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TRAIN_SAMPLES = 20_000
EPOCHS = 2
BATCH_SIZE = 128
SEED = 42


def one(deterministic: bool) -> dict[str, float]:
    """One training in this process; the numbers as JSON on stdout."""
    from mnist_trainer import data, lineage
    from mnist_trainer.model import build_model

    if deterministic:
        lineage.enable_determinism(SEED)
    dataset = data.load_npz(os.environ["MNIST_NPZ"])
    splits = data.make_splits(
        dataset, batch_size=BATCH_SIZE, seed=SEED, validation_fraction=0.1, max_train_samples=TRAIN_SAMPLES
    )
    model = build_model(1e-3, SEED)
    started = time.perf_counter()
    model.fit(splits.train, validation_data=splits.validation, epochs=EPOCHS, shuffle=False, verbose=0)
    fit_seconds = time.perf_counter() - started
    loss, accuracy = model.evaluate(splits.test, verbose=0)
    return {"fit_seconds": fit_seconds, "test_accuracy": float(accuracy), "test_loss": float(loss)}


def _measure(deterministic: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.determinism", "one", "on" if deterministic else "off"]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for round_number in range(ROUNDS):
        for setting in ("off", "on") if round_number % 2 == 0 else ("on", "off"):
            result = _measure(setting == "on")
            runs[setting].append(result)
            print(f"bench: determinism {setting}: fit {result['fit_seconds']:.2f} s, test accuracy "
                  f"{result['test_accuracy']:.6f}, loss {result['test_loss']:.6f}", flush=True)  # fmt: skip
    fit = {setting: median([r["fit_seconds"] for r in results]) for setting, results in runs.items()}
    images_per_second = {s: TRAIN_SAMPLES * 0.9 * EPOCHS / seconds for s, seconds in fit.items()}
    repeats = {
        setting: len({(r["test_accuracy"], r["test_loss"]) for r in results}) == 1 for setting, results in runs.items()
    }
    summary = {
        "train_samples": TRAIN_SAMPLES,
        "epochs": EPOCHS,
        "batch_size": BATCH_SIZE,
        "rounds": ROUNDS,
        "median_fit_seconds": fit,
        "images_per_second": images_per_second,
        "slowdown_with_determinism": fit["on"] / fit["off"],
        "identical_results_across_runs": repeats,
        "runs": runs,
    }
    print(
        f"bench: determinism costs {100 * (fit['on'] / fit['off'] - 1):+.1f} % fit time on this CPU "
        f"({fit['off']:.2f} s off, {fit['on']:.2f} s on); identical results across runs: "
        f"on {repeats['on']}, off {repeats['off']}",
        flush=True,
    )
    save("determinism", summary)


if __name__ == "__main__":
    if sys.argv[1:2] == ["one"]:
        print(json.dumps(one(sys.argv[2] == "on")))
    else:
        main()
