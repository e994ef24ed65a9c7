"""The CLI as a user meets it: bad input is one line and exit 2 before anything is created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.trainer.conftest import write_npz


def run_trainer(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mnist_trainer", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["--epochs", "two"], "--epochs: 'two' is not a whole number"),
        (["--batch-size", "-8"], "--batch-size: must be at least 1"),
        (["--batch-size", "big"], "--batch-size: 'big' is neither a whole number nor 'auto'"),
        (["sweep", "--batch-size", "auto,0"], "--batch-size: must be at least 1, got 0"),
        (["--mixed-precision", "yes"], "--mixed-precision: invalid choice: 'yes' (choose from 'auto', 'on', 'off')"),
        (["sweep", "--xla", "true"], "--xla: invalid choice: 'true' (choose from 'auto', 'on', 'off')"),
        (["--learning-rate", "0"], "--learning-rate: must be a finite number above 0"),
        (["--learning-rate", "-0.1"], "--learning-rate: must be a finite number above 0"),
        (["--learning-rate", "nan"], "--learning-rate: must be a finite number above 0"),
        (["--learning-rate", "inf"], "--learning-rate: must be a finite number above 0"),
        (["--seed", "-1"], "--seed: must not be negative"),
        (["--validation-fraction", "1"], "--validation-fraction: must be between 0 and 1"),
        (["--experiment-name", " "], "--experiment-name: must not be empty"),
        (["--registered-model-name", ""], "--registered-model-name: must not be empty"),
        (["--max-train-samples", "0"], "--max-train-samples: must be at least 1"),
        (["--epoch", "3", "--bogus"], "unrecognized arguments: --bogus"),
        (["--data", "/nonexistent/mnist.npz"], "/nonexistent/mnist.npz: no such file"),
    ],
)
def test_invalid_input_is_one_line_and_exit_2_before_any_run(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_trainer(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("trainer: error: ")
    assert not (tmp_path / "mlflow.db").exists(), "no tracking store may be touched on bad input"


def test_corrupt_npz_is_refused_before_any_run(tmp_path: Path) -> None:
    good = write_npz(tmp_path / "good.npz", train=50, test=10)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:2000])
    result = run_trainer(["--data", str(tmp_path / "cut.npz")], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a readable .npz file" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_too_large_subset_is_refused(tmp_path: Path) -> None:
    npz = write_npz(tmp_path / "m.npz", train=50, test=10)
    result = run_trainer(["--data", str(npz), "--max-train-samples", "51"], tmp_path)
    assert result.returncode == 2 and "exceeds the 50 training images" in result.stderr


def test_a_tracking_uri_that_is_not_one_is_refused(tmp_path: Path) -> None:
    npz = write_npz(tmp_path / "m.npz", train=50, test=10)
    result = run_trainer(["--data", str(npz)], tmp_path, {"MLFLOW_TRACKING_URI": "ftp://example/x"})
    assert result.returncode == 2 and "is not a tracking URI" in result.stderr


@pytest.mark.slow
def test_an_unknown_experiment_is_refused_when_creation_is_off(tmp_path: Path) -> None:
    npz = write_npz(tmp_path / "m.npz", train=50, test=10)
    result = run_trainer(["--data", str(npz), "--experiment-name", "typo", "--no-create-experiment"], tmp_path)
    assert result.returncode == 2, result.stderr
    # Looking the name up opens the local store (MLflow logs that); the error itself is one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer:")]
    assert errors == ["trainer: error: experiment 'typo' does not exist (and --no-create-experiment is set)"]


def test_an_unreachable_server_is_one_line_and_exit_1_within_the_preflight_timeout(tmp_path: Path) -> None:
    npz = write_npz(tmp_path / "m.npz", train=50, test=10)
    result = run_trainer(
        ["--data", str(npz)],
        tmp_path,
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "TRAINER_PREFLIGHT_TIMEOUT": "2"},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "trainer: error: tracking server at http://127.0.0.1:9 did not answer within 2 s (ConnectionError)"
    ]


def test_help_lists_the_commands_and_train_help_every_option(tmp_path: Path) -> None:
    overview = run_trainer(["--help"], tmp_path)
    assert overview.returncode == 0
    for command in ("train", "sweep", "models", "promote", "predict"):
        assert command in overview.stdout
    result = run_trainer(["train", "--help"], tmp_path)
    assert result.returncode == 0
    for option in (
        "--epochs",
        "--batch-size",
        "--learning-rate",
        "--seed",
        "--run-name",
        "--experiment-name",
        "--registered-model-name",
        "--data",
        "--no-register",
        "--mixed-precision",
        "--xla",
    ):
        assert option in result.stdout
