"""MLflow's system metrics in the trainer's runs: recorded by default (even in a run of seconds), off on request,
and drawn in the run's System metrics tab."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient
from playwright.sync_api import Page, expect

from tests.stack.conftest import STACK_URL, Training, compose
from tests.stack.test_browser import SCREENSHOTS, page  # noqa: F401  (the module's browser fixture)

# What MLflow 3.17's CPU, memory, disk and network monitors record (mlflow/system_metrics/metrics/).
EXPECTED = (
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/disk_usage_percentage",
    "system/network_receive_megabytes",
)
# A run of a few seconds, started the way the trainer starts its runs (mlflow.start_run, the compose env).
SHORT_RUN = (
    "import mlflow, sys, time;"
    "mlflow.set_experiment(sys.argv[1]);"
    "run = mlflow.start_run(run_name='short');"
    "time.sleep(4);"
    "mlflow.end_run();"
    "print(run.info.run_id)"
)


def short_run(experiment: str, env: dict[str, str] | None = None) -> str:
    result = compose(
        "run", "--rm", "-T", "--no-deps", "--entrypoint", "python", "trainer", "-c", SHORT_RUN, experiment, env=env
    )
    return result.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class ShortRuns:
    on: str
    off: str


@pytest.fixture(scope="module")
def short_runs() -> ShortRuns:
    experiment = f"system-metrics-{uuid.uuid4().hex[:8]}"
    return ShortRuns(on=short_run(experiment), off=short_run(experiment, env={"TRAINER_SYSTEM_METRICS": "false"}))


def test_a_run_of_seconds_records_system_metrics_and_the_flag_turns_them_off(
    client: MlflowClient, short_runs: ShortRuns
) -> None:
    on = client.get_run(short_runs.on)
    for key in EXPECTED:
        assert key in on.data.metrics, f"{key} missing; got {sorted(on.data.metrics)}"
        assert len(client.get_metric_history(on.info.run_id, key)) >= 1
    off = client.get_run(short_runs.off)
    assert not [key for key in off.data.metrics if key.startswith("system/")]


def test_the_trainers_run_records_system_metrics(client: MlflowClient, first_training: Training) -> None:
    metrics = client.get_run(first_training.run_id).data.metrics
    for key in EXPECTED:
        assert key in metrics, f"the trainer's run has no {key}"


def test_the_system_metrics_tab_draws_them(
    page: Page,  # noqa: F811
    client: MlflowClient,
    short_runs: ShortRuns,
) -> None:
    run = client.get_run(short_runs.on)
    page.goto(f"{STACK_URL}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    tab = page.get_by_role("tab", name="System metrics")
    # The run page's first load on a busy machine can take longer than the usual UI timeout.
    expect(tab).to_be_visible(timeout=90_000)
    tab.click()
    # One chart per system metric; a run of seconds has one sample each, which the UI draws as a bar.
    for key in EXPECTED:
        # The tab titles its charts without the `system/` prefix (MLflow 3.17's UI).
        expect(page.get_by_role("heading", name=key.removeprefix("system/"), exact=True)).to_be_visible()
    # Drawn, not just titled: the disk-usage bar carries the logged value as its label.
    disk = run.data.metrics["system/disk_usage_percentage"]
    expect(page.get_by_text(f"{disk:.2f}", exact=True).first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "run-system-metrics.png"))
