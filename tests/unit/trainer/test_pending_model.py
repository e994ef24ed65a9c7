"""A storage outage at the end of training keeps the model locally; `upload` finishes the job later."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import pytest

from mnist_trainer import data, tracking, training
from mnist_trainer.config import RunConfig, Settings, TrackingConfig, TrainConfig
from tests.unit.trainer.conftest import write_npz


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_an_unstorable_model_is_kept_then_uploaded_to_its_own_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    dataset = data.load_npz(write_npz(tmp_path / "m.npz", train=300, test=60))
    config = RunConfig(TrainConfig(1, 3e-3, 32, 0, 0.1), TrackingConfig(experiment_name="outage", run_name="doomed"))
    real_log_model = tracking.log_model

    def store_is_down(*args: object, **kwargs: object) -> NoReturn:
        raise OSError("S3 endpoint http://minio:9000 unreachable")

    monkeypatch.setattr(tracking, "log_model", store_is_down)
    with pytest.raises(tracking.ModelNotStoredError) as raised:
        training.train_and_track(config, dataset, Settings(tracking_uri=uri, pending_dir=tmp_path / "pending"))
    message = str(raised.value)
    assert "S3 endpoint http://minio:9000 unreachable" in message
    assert "\n" not in message
    (kept,) = (tmp_path / "pending").iterdir()
    assert f"trainer upload {kept}" in message
    assert {path.name for path in kept.iterdir()} == {"model.keras", "input_example.npy", "run.json"}
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(kept.name).info.status == "FAILED"

    monkeypatch.setattr(tracking, "log_model", real_log_model)
    result = training.upload_pending(kept, uri)
    run = client.get_run(kept.name)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_uploaded_later"] == "true"
    assert result.metrics["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert not kept.exists()
    mlflow.set_tracking_uri(uri)
    assert mlflow.pyfunc.load_model(result.model_uri).predict(data.to_model_input(dataset.x_test[:2])).shape == (2, 10)
