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


def test_version_description_says_the_precision_when_the_run_recorded_it() -> None:
    def first_line(params: dict[str, object], devices: str) -> str:
        facts = VersionFacts(params, {"test_accuracy": 0.99}, "tfds", "d", "http://ui/#/experiments/1/runs/r1", devices)
        return version_description(facts).splitlines()[0]

    mixed = first_line({"mixed_precision": "on"}, "GPU:0 (NVIDIA A100)")
    assert mixed.endswith(" on GPU:0 (NVIDIA A100) in mixed precision (float16 compute, float32 output).")
    assert first_line({"mixed_precision": "off"}, "CPU").endswith(" on CPU in float32.")
    assert first_line({}, "CPU").endswith(" on CPU."), "runs from before the option: no guess"
