"""Registering a trained model as a new version, described well enough to choose between versions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

REGISTERED_MODEL_DESCRIPTION = """\
Handwritten-digit classifier (MNIST, 10 classes), a Keras convnet trained by the stack's trainer.

Input: float32 images of shape (n, 28, 28, 1), pixel values scaled to [0, 1].
Output: (n, 10) class probabilities.

Load a version with `mlflow.pyfunc.load_model("models:/{name}/<version>")`.
Each version's description lists its parameters, metrics and the run that made it.
"""


@dataclass(frozen=True)
class VersionFacts:
    """What a version's description shows: enough to compare versions without opening their runs."""

    params: Mapping[str, object]
    metrics: Mapping[str, float]
    data_source: str
    data_digest: str
    run_url: str
    devices: str


def _table(header: tuple[str, str], rows: Mapping[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in sorted(rows.items())]
    return "\n".join(lines)


def version_description(facts: VersionFacts) -> str:
    metrics = {name: f"{value:.4f}" for name, value in facts.metrics.items()}
    params = {name: str(value) for name, value in facts.params.items()}
    return "\n\n".join(
        [
            f"Trained by run [{facts.run_url.rsplit('/', 1)[-1]}]({facts.run_url}) on {facts.devices}.",
            "**Metrics**\n\n" + _table(("metric", "value"), metrics),
            "**Parameters**\n\n" + _table(("parameter", "value"), params),
            f"**Data**: `{facts.data_source}` (digest `{facts.data_digest}`)",
        ]
    )


def register(model_uri: str, name: str, facts: VersionFacts, tags: Mapping[str, str]) -> int:
    """Create a new version of `name` from `model_uri`; returns its number."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(model_uri, name, tags=dict(tags))
    client = MlflowClient()
    client.update_model_version(name, version.version, description=version_description(facts))
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION.format(name=name))
    return int(version.version)
