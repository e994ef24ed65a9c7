"""What `auto` means with and without a GPU, and that the run records what it resolved to."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from mnist_trainer import accelerate, cli, data, sweep, tracking, training
from mnist_trainer.accelerate import Acceleration, resolve
from mnist_trainer.config import RunConfig, Settings, TrackingConfig, TrainConfig
from tests.unit.trainer.conftest import write_npz
from tests.unit.trainer.test_cli import run_trainer


@pytest.mark.parametrize(
    ("gpus", "mixed_precision", "xla", "batch_size", "capability", "expected"),
    [
        (0, "auto", "auto", "auto", None, Acceleration(mixed_precision=False, xla=False, batch_size=128)),
        (1, "auto", "auto", "auto", None, Acceleration(mixed_precision=True, xla=True, batch_size=512)),
        (2, "auto", "auto", "auto", (8, 0), Acceleration(mixed_precision=True, xla=True, batch_size=512)),
        (1, "auto", "auto", "auto", (7, 0), Acceleration(mixed_precision=True, xla=True, batch_size=512)),
        # A pre-Volta GPU has no tensor cores: float16 would only add casts, XLA and the batch still help.
        (1, "auto", "auto", "auto", (6, 1), Acceleration(mixed_precision=False, xla=True, batch_size=512)),
        (0, "on", "on", "auto", None, Acceleration(mixed_precision=True, xla=True, batch_size=128)),
        (0, "off", "off", 64, None, Acceleration(mixed_precision=False, xla=False, batch_size=64)),
        (0, "auto", "on", 32, None, Acceleration(mixed_precision=False, xla=True, batch_size=32)),
        (1, "off", "off", "auto", None, Acceleration(mixed_precision=False, xla=False, batch_size=512)),
        (1, "on", "off", 64, (6, 1), Acceleration(mixed_precision=True, xla=False, batch_size=64)),
        (1, "off", "auto", 1024, (9, 0), Acceleration(mixed_precision=False, xla=True, batch_size=1024)),
    ],
)
def test_resolution_table(
    gpus: int,
    mixed_precision: accelerate.Toggle,
    xla: accelerate.Toggle,
    batch_size: int | Literal["auto"],
    capability: tuple[int, int] | None,
    expected: Acceleration,
) -> None:
    assert resolve(gpus, mixed_precision, xla, batch_size, capability) == expected


def test_forcing_gpu_settings_on_a_cpu_warns_in_one_line_and_auto_does_not() -> None:
    assert resolve(0).warning is None
    assert resolve(1, "on", "on").warning is None
    assert (
        resolve(0, "on", "on").warning
        == "--mixed-precision on and --xla on without a GPU: expect slower training on the CPU"
    )
    assert resolve(0, "off", "on").warning == "--xla on without a GPU: expect slower training on the CPU"
    assert "compute capability 6.1" in (resolve(1, "on", capability=(6, 1)).warning or "")


def test_params_hold_the_resolved_values() -> None:
    assert resolve(1, xla="off").params() == {"mixed_precision": "on", "xla": "off", "batch_size": 512}


def test_the_flags_default_to_auto_and_parse_in_train_and_sweep() -> None:
    args = cli.parse_args([])
    assert (args.mixed_precision, args.xla, args.batch_size) == ("auto", "auto", "auto")
    assert cli.parse_args(["--batch-size", "256", "--xla", "off"]).batch_size == 256
    swept = cli.parse_args(["sweep", "--batch-size", "auto,64,auto", "--mixed-precision", "on"])
    assert swept.batch_size == ["auto", 64] and swept.mixed_precision == "on"
    assert cli.parse_args(["sweep"]).batch_size == ["auto"]


def test_a_sweep_hands_the_flags_to_its_children(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[RunConfig, list[sweep.Combination]]] = []

    def fake_run_sweep(base: RunConfig, combinations: list[sweep.Combination], *rest: object) -> int:
        seen.append((base, combinations))
        return 0

    monkeypatch.setattr(data, "load_for_training", lambda options, tfds_dir: None)
    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    args = cli.parse_args(["sweep", "--batch-size", "auto,64", "--mixed-precision", "on", "--xla", "off"])
    cli.command_sweep(args, Settings(tracking_uri="sqlite:///unused.db"))
    ((base, combinations),) = seen
    assert (base.train.mixed_precision, base.train.xla) == ("on", "off")
    assert [c.label for c in combinations] == ["lr=0.001 bs=auto", "lr=0.001 bs=64"]
    assert sweep._grid_param([128, "auto", 64]) == "auto,64,128"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_on_this_cpu_machine_auto_records_float32_no_xla_and_batch_128(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    npz = write_npz(tmp_path / "m.npz", train=200, test=50)
    args = ["--data", str(npz), "--epochs", "1", "--max-train-samples", "100", "--experiment-name", "auto"]
    result = run_trainer([*args, "--no-register"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trainer: warning" not in result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("auto")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert {"mixed_precision": "off", "xla": "off", "batch_size": "128"}.items() <= run.data.params.items()
    assert run.data.tags["devices"] == "CPU"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_forced_on_a_cpu_the_run_trains_in_mixed_precision_with_xla_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import keras
    from mlflow import MlflowClient

    logged: list[Any] = []

    def log_model(model: Any, example: Any) -> SimpleNamespace:
        # Stands in for MLflow's 10 s of saving and requirement inference; the model itself is what matters here.
        logged.append(model)
        return SimpleNamespace(model_uri="models:/m-stand-in")

    monkeypatch.setattr(tracking, "log_model", log_model)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Every batch shape is a separate XLA compilation (seconds each on this CPU): 90 training, 10 validation and
    # 60 test images in batches of 30 keep them to one per step function and split.
    dataset = data.load_npz(write_npz(tmp_path / "m.npz", train=200, test=60))
    config = RunConfig(
        TrainConfig(1, 3e-3, 30, 0, 0.1, 100, mixed_precision="on", xla="on", deterministic="off"),
        TrackingConfig(experiment_name="forced", run_name="forced"),
    )
    result = training.train_and_track(config, dataset, Settings(tracking_uri=uri))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trainer: warning")]
    assert warnings == [
        "trainer: warning: --mixed-precision on and --xla on without a GPU: expect slower training on the CPU"
    ]
    params = MlflowClient(tracking_uri=uri).get_run(result.run_id).data.params
    assert {"mixed_precision": "on", "xla": "on", "batch_size": "30", "train_samples": "90"}.items() <= params.items()
    (model,) = logged
    assert model.jit_compile is True
    assert model.layers[0].compute_dtype == "float16"
    assert model.predict(data.to_model_input(dataset.x_test[:30]), verbose=0).dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
