"""The run configuration: flags -> object -> config.json -> object, and the same checks for files as for flags."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from mnist_trainer import cli, config
from mnist_trainer.config import ConfigError, RegistryConfig, RunConfig, TrackingConfig, TrainConfig
from tests.unit.trainer.test_cli import run_trainer

FLAGS = [
    "--epochs", "3", "--learning-rate", "0.0003", "--batch-size", "64", "--seed", "7",
    "--validation-fraction", "0.2", "--max-train-samples", "1000", "--mixed-precision", "off", "--xla", "on",
    "--deterministic", "off", "--data", "/data/mnist.npz", "--experiment-name", "exp", "--run-name", "r1",
    "--no-create-experiment", "--registered-model-name", "digits", "--no-register",
    "--promotion-metric", "test_loss", "--promotion-margin", "0.01", "--min-accuracy", "0.5",
]  # fmt: skip


def test_flags_to_object_to_config_json_to_object_round_trip(tmp_path: Path) -> None:
    parsed = config.from_namespace(cli.parse_args(FLAGS))
    assert parsed.train == TrainConfig(
        epochs=3, learning_rate=3e-4, batch_size=64, seed=7, validation_fraction=0.2, max_train_samples=1000,
        mixed_precision="off", xla="on", deterministic="off", data="/data/mnist.npz",
    )  # fmt: skip
    assert parsed.tracking == TrackingConfig("exp", "r1", no_create_experiment=True)
    assert parsed.registry == RegistryConfig("digits", True, "test_loss", 0.01, 0.5)
    path = tmp_path / "config.json"
    path.write_text(parsed.to_json())
    assert json.loads(path.read_text())["train"]["learning_rate"] == 3e-4
    assert RunConfig.from_file(path) == parsed
    # And back to flags: a file given to `train --config` parses to the same object.
    assert config.from_namespace(cli.parse_args(["train", "--config", str(path)])) == parsed


def test_defaults_round_trip_and_every_field_has_a_flag_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    default = RunConfig()
    assert RunConfig.from_json(default.to_json()) == default
    assert config.from_namespace(cli.parse_args([])) == default
    with pytest.raises(SystemExit):
        cli.parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    for section in (TrainConfig, TrackingConfig, RegistryConfig):
        for spec in fields(section):
            if spec.name != "parent_run_id":  # set by sweeps for their children only
                assert config.flag(spec.name) in help_text, spec.name


def test_flags_next_to_a_config_file_win(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(replace(RunConfig(), train=TrainConfig(epochs=9, seed=3)).to_json())
    parsed = config.from_namespace(cli.parse_args(["train", "--config", str(path), "--epochs", "2"]))
    assert (parsed.train.epochs, parsed.train.seed) == (2, 3)


def test_an_older_config_without_a_newer_option_takes_its_default() -> None:
    data = RunConfig().to_dict()
    del data["train"]["deterministic"]
    assert RunConfig.from_dict(data).train.deterministic == TrainConfig().deterministic


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"epochs": 0}}, "config: train.epochs: must be at least 1, got 0"),
        ({"train": {"learning_rate": -1.0}}, "config: train.learning_rate: must be a finite number above 0"),
        ({"train": {"xla": "yes"}}, "config: train.xla: invalid choice: 'yes'"),
        ({"train": {"epoch": 3}}, "config: train.epoch: unknown option"),
        ({"registry": {"no_register": "yes"}}, "config: registry.no_register: must be true or false"),
        ({"tracking": {"experiment_name": None}}, "config: tracking.experiment_name: must not be null"),
        ({"extra": {}}, "config: unknown section 'extra'"),
    ],
)
def test_a_file_gets_the_checks_its_flags_get(change: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        RunConfig.from_dict(change)
    assert message in str(raised.value)


def test_a_bad_config_file_is_one_line_and_exit_2_before_any_run(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {"epochs": 0}}))
    result = run_trainer(["train", "--config", str(path)], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"trainer: error: {path}: train.epochs: must be at least 1, got 0"]
    assert not (tmp_path / "mlflow.db").exists()


def test_params_are_the_whole_config_with_training_fields_by_name() -> None:
    params = RunConfig().params()
    assert params["epochs"] == "5" and params["max_train_samples"] == "none"
    assert params["registry.min_accuracy"] == "0.9" and params["tracking.experiment_name"] == "mnist"
    assert len(params) == sum(len(fields(section)) for section in (TrainConfig, TrackingConfig, RegistryConfig))


def test_a_sweep_varies_the_fields_marked_sweepable() -> None:
    args = cli.parse_args(["sweep", "--learning-rate", "0.001,0.003", "--batch-size", "64,auto"])
    assert config.sweep_grid(args) == {"learning_rate": [0.001, 0.003], "batch_size": [64, "auto"]}
    assert config.short_label({"learning_rate": 0.003, "batch_size": 64}) == "lr=0.003 bs=64"


def test_the_configuration_page_lists_every_training_flag() -> None:
    # docs/configuration.md's tables are rendered from the code by the MkDocs hook: render them as `make docs`
    # does and look for every flag a person can pass.
    hook_path = Path(__file__).resolve().parents[3] / "docs" / "hooks" / "configuration.py"
    spec = importlib.util.spec_from_file_location("configuration_hook", hook_path)
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = hook  # its dataclasses look their module up there
    spec.loader.exec_module(hook)
    table = hook.render()["<!-- trainer-settings -->"]
    for section in (TrainConfig, TrackingConfig, RegistryConfig):
        for field_spec in fields(section):
            if field_spec.name != "parent_run_id":
                assert f"| `{config.flag(field_spec.name)}" in table, field_spec.name


def _declared(cls: type) -> list[str]:
    return [spec.name for spec in fields(cls) if not config._option(spec).hidden]


def test_the_reference_lists_every_option_and_setting_once_per_section() -> None:
    rows = config.reference()
    assert all(set(row) >= {"name", "env", "default", "description", "section"} for row in rows)
    assert all(isinstance(value, str) for row in rows for value in row.values())
    for section, cls in config.REFERENCE_SECTIONS:
        listed = [row for row in rows if row["section"] == section]
        for spec in fields(cls):
            how = config._option(spec)
            if how.hidden:
                continue
            name = "" if cls is config.Settings else how.positional or config.flag(spec.name)
            matches = [row for row in listed if row["name"] == name and row["env"] == (how.env or "")]
            assert len(matches) == 1, (section, spec.name)
            assert matches[0]["description"].startswith(how.help), spec.name
    # Every group a command takes is in the reference, and nothing else is.
    groups = {cls for groups in config.COMMAND_OPTIONS.values() for cls in groups} | {config.Settings}
    assert groups == {cls for _, cls in config.REFERENCE_SECTIONS}
    assert len(rows) == sum(len(_declared(cls)) for _, cls in config.REFERENCE_SECTIONS)
    data = next(row for row in rows if row["name"] == "--data" and row["section"] == "train")
    assert (data["env"], data["default"]) == ("TRAINER_DATA", "tfds")
    timeout = next(row for row in rows if row["env"] == "TRAINER_PREFLIGHT_TIMEOUT")
    assert (timeout["name"], timeout["default"], timeout["section"]) == ("", "30", "environment")


def test_every_command_option_has_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for command, groups in config.COMMAND_OPTIONS.items():
        with pytest.raises(SystemExit):
            cli.parse_args([command, "--help"])
        help_text = capsys.readouterr().out
        for cls in groups:
            for spec in fields(cls):
                how = config._option(spec)
                if not how.hidden:
                    assert (how.positional or config.flag(spec.name)) in help_text, (command, spec.name)


def test_importing_the_config_imports_no_tensorflow_or_mlflow() -> None:
    # The docs build imports config.reference() from the host's venv: it must stay cheap.
    code = "import sys, mnist_trainer.config; print(sorted({'tensorflow', 'mlflow', 'keras'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_settings_come_from_the_environment_given_and_empty_means_unset() -> None:
    settings = config.Settings.from_environ(
        {
            "MLFLOW_TRACKING_URI": "http://tracking-server:5000",
            "TRAINER_PREFLIGHT_TIMEOUT": "2.5",
            "TRAINER_PENDING_DIR": "/tmp/kept",
            "MLFLOW_TRACKING_INSECURE_TLS": "TRUE",
            "TRAINER_GIT_SHA": "",
            "MLFLOW_TRACKING_PASSWORD": "s3cret",
        }
    )
    assert settings.tracking_uri == "http://tracking-server:5000" and settings.preflight_timeout == 2.5
    assert settings.pending_dir == Path("/tmp/kept") and settings.tracking_insecure_tls is True
    assert settings.git_sha is None and settings.code_digest_file == config.CODE_DIGEST_FILE
    assert "s3cret" not in repr(settings)
    assert config.Settings.from_environ({}) == config.Settings()
    assert config.Settings().tracking_uri == config.DEFAULT_TRACKING_URI


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TRAINER_PREFLIGHT_TIMEOUT", "soon", "TRAINER_PREFLIGHT_TIMEOUT: 'soon' is not a number"),
        ("TRAINER_PREFLIGHT_TIMEOUT", "0", "TRAINER_PREFLIGHT_TIMEOUT: must be a finite number above 0, got 0"),
        ("MLFLOW_TRACKING_INSECURE_TLS", "yes", "MLFLOW_TRACKING_INSECURE_TLS: must be true or false, got 'yes'"),
    ],
)
def test_a_bad_setting_names_its_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config.Settings.from_environ({variable: value})
    assert str(raised.value) == message


def test_a_bad_setting_is_one_line_and_exit_2_before_any_run(tmp_path: Path) -> None:
    result = run_trainer(["--epochs", "1"], tmp_path, {"TRAINER_PREFLIGHT_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["trainer: error: TRAINER_PREFLIGHT_TIMEOUT: 'soon' is not a number"]
    assert not (tmp_path / "mlflow.db").exists()


def test_the_data_flag_defaults_to_the_environment_it_is_given() -> None:
    assert cli.parse_args([], {"TRAINER_DATA": "/data/mnist.npz"}).data == "/data/mnist.npz"
    assert cli.parse_args([], {"TRAINER_DATA": ""}).data == "tfds"
    assert cli.parse_args(["--data", "tfds"], {"TRAINER_DATA": "/data/mnist.npz"}).data == "tfds"
