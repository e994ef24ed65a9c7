"""MLflow's system metrics in the trainer's runs: recorded by default (even in a run of seconds), off on request,
and drawn in the run's System metrics tab."""

from __future__ import annotations

import uuid

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


def test_a_run_of_seconds_records_system_metrics_and_the_flag_turns_them_off(client: MlflowClient) -> None:
    experiment = f"system-metrics-{uuid.uuid4().hex[:8]}"
    on = client.get_run(short_run(experiment))
    for key in EXPECTED:
        assert key in on.data.metrics, f"{key} missing; got {sorted(on.data.metrics)}"
        assert len(client.get_metric_history(on.info.run_id, key)) >= 1
    off = client.get_run(short_run(experiment, env={"TRAINER_SYSTEM_METRICS": "false"}))
    assert not [key for key in off.data.metrics if key.startswith("system/")]


def test_the_trainers_run_shows_system_metrics_in_the_ui(
    page: Page,  # noqa: F811
    client: MlflowClient,
    first_training: Training,
) -> None:
    run = client.get_run(first_training.run_id)
    for key in EXPECTED:
        assert key in run.data.metrics, f"the trainer's run has no {key}"
    page.goto(f"{STACK_URL}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    page.get_by_role("tab", name="System metrics").click()
    page.get_by_role("searchbox", name="Search metric charts").fill("cpu_utilization_percentage")
    expect(page.get_by_role("heading", name="system/cpu_utilization_percentage", exact=True)).to_be_visible()
    expect(page.get_by_text(f"{run.info.run_name} (system/cpu_utilization_percentage)")).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "run-system-metrics.png"))
