from __future__ import annotations

from mnist_trainer.registry import VersionFacts, version_description


def test_version_description_has_metrics_params_data_and_run_link() -> None:
    text = version_description(
        VersionFacts(
            params={"epochs": 5, "learning_rate": 0.001},
            metrics={"test_accuracy": 0.99123, "test_loss": 0.031},
            data_source="/data/mnist.npz",
            data_digest="abc123",
            run_url="http://localhost:5000/#/experiments/1/runs/r1",
            devices="CPU",
        )
    )
    assert "[r1](http://localhost:5000/#/experiments/1/runs/r1)" in text
    assert "| test_accuracy | 0.9912 |" in text
    assert "| epochs | 5 |" in text and "| learning_rate | 0.001 |" in text
    assert "`/data/mnist.npz` (digest `abc123`)" in text
    # Tables render only with their header separator line.
    assert text.count("| --- | --- |") == 2
