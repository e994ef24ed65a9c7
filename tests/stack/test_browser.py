"""What a person sees: the registry and a run's curves in a real browser (Debian's Chromium via Playwright).

Screenshots go to test-artifacts/screenshots/ for a human to look at after the run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mlflow import MlflowClient
from playwright.sync_api import Page, expect, sync_playwright

from tests.stack.conftest import REPO, STACK_URL, Names, Training
from tests.support.chromium import launch

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(UI_TIMEOUT_MS)
        yield tab
        browser.close()


def test_the_ui_opens_on_model_training_with_the_trainers_experiment(
    page: Page,
    client: MlflowClient,
    first_training: Training,
) -> None:
    # A browser that has never chosen a view (a fresh Playwright context): MLflow's default would be GenAI.
    page.goto(f"{STACK_URL}/")
    # "Model registry" is in the sidebar only in the model-training view (MLflow 3.17's UI); "Prompts" only in GenAI.
    expect(page.get_by_role("link", name="Model registry")).to_be_visible(timeout=UI_TIMEOUT_MS)
    # exact: the home page's "Getting started" cards hold a link whose name begins with "Prompts" in both views.
    expect(page.get_by_role("link", name="Prompts", exact=True)).to_have_count(0)
    page.screenshot(path=str(SCREENSHOTS / "home.png"))
    # The trainer's experiment: its runs table, in the same view, from a plain link without any query.
    run = client.get_run(first_training.run_id)
    page.goto(f"{STACK_URL}/#/experiments/{run.info.experiment_id}")
    expect(page.get_by_role("link", name=run.info.run_name, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_role("link", name="Model registry")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.screenshot(path=str(SCREENSHOTS / "experiment.png"))


def test_the_registry_page_lists_the_versions_and_the_champion_alias(
    page: Page,
    client: MlflowClient,
    first_training: Training,
    names: Names,
) -> None:
    page.goto(f"{STACK_URL}/#/models/{names.model}")
    expect(page.get_by_role("heading", name=names.model)).to_be_visible()
    versions = [int(v.version) for v in client.search_model_versions(f"name = '{names.model}'")]
    for version in versions:
        expect(page.get_by_role("link", name=f"Version {version}", exact=True)).to_be_visible()
    champion = int(client.get_model_version_by_alias(names.model, "champion").version)
    champion_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {champion}", exact=True))
    expect(champion_row).to_contain_text("champion")
    page.screenshot(path=str(SCREENSHOTS / "registry.png"))


def test_a_run_page_shows_the_val_accuracy_chart(
    page: Page,
    client: MlflowClient,
    first_training: Training,
) -> None:
    run = client.get_run(first_training.run_id)
    page.goto(f"{STACK_URL}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    page.get_by_role("tab", name="Model metrics").click()
    # Charts off screen are not drawn until scrolled to; searching shows the one wanted, as a person would.
    page.get_by_role("searchbox", name="Search metric charts").fill("val_accuracy")
    chart_title = page.get_by_role("heading", name="val_accuracy", exact=True)
    expect(chart_title).to_be_visible()
    # One legend entry per plotted series: the run's own val_accuracy line.
    expect(page.get_by_text(f"{run.info.run_name} (val_accuracy)")).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "run-metrics.png"))
