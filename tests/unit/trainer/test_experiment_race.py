"""Trainers that create the same experiment at the same instant: the loser's run must still land in it."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import pytest

from mnist_trainer import data, tracking, training
from mnist_trainer.config import RunConfig, Settings, TrackingConfig, TrainConfig
from tests.unit.trainer.conftest import write_npz


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_the_run_of_a_trainer_that_lost_the_creation_race_lands_in_its_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Another trainer created the experiment between this one's lookup and its create call.
    experiment_id = MlflowClient(tracking_uri=uri).create_experiment("crowd")
    real_lookup = TrackingServiceClient.get_experiment_by_name
    lookups: list[str] = []

    def not_there_at_first(self: TrackingServiceClient, name: str) -> object:
        lookups.append(name)
        return None if len(lookups) == 1 else real_lookup(self, name)

    def skip_model_upload(*args: object, **kwargs: object) -> NoReturn:
        raise OSError("not needed here")

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", not_there_at_first)
    monkeypatch.setattr(tracking, "log_model", skip_model_upload)
    dataset = data.load_npz(write_npz(tmp_path / "m.npz", train=200, test=20))
    config = RunConfig(TrainConfig(1, 3e-3, 32, 0, 0.1), TrackingConfig(experiment_name="crowd", run_name="late"))
    with pytest.raises(tracking.ModelNotStoredError):
        training.train_and_track(config, dataset, Settings(tracking_uri=uri, pending_dir=tmp_path / "pending"))

    assert len(lookups) >= 2, "the race path (create fails, look up again) was not taken"
    (kept,) = (tmp_path / "pending").iterdir()
    assert MlflowClient(tracking_uri=uri).get_run(kept.name).info.experiment_id == experiment_id
