"""Helpers shared by the monitoring tests: a parsed scrape of a live server's /metrics, a
bounded wait for a sample to reach a value, and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from paths import DEPLOY
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = DEPLOY / "grafana" / "rewardserve.json"


class Scrape:
    """One /metrics response, parsed by prometheus-client's own parser."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` whose labels include `labels` (None when absent); several
        matching samples are summed, as PromQL's sum() would."""
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        return sum(found) if found else None

    def labels(self, name_prefix: str, label: str) -> set[str]:
        """Every value `label` takes on the samples whose name starts with `name_prefix`."""
        return {s.labels[label] for s in self.samples if s.name.startswith(name_prefix) and label in s.labels}

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def scrape(client: httpx.Client) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


def wait_for_sample(client: httpx.Client, done: Callable[[Scrape], bool], what: str,
                    timeout: float = 60.0) -> Scrape:
    """Scrape until `done(scrape)`, at most `timeout` seconds; the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(client)
        if done(current):
            return current
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def dashboard_queries(row: str | None = None) -> list[str]:
    """Every query of the dashboard, or of the panels under the row titled `row`."""
    panels, under = json.loads(DASHBOARD.read_text())["panels"], None
    queries = []
    for panel in panels:
        under = panel["title"] if panel["type"] == "row" else under
        if row is None or under == row:
            queries += [target["expr"] for target in panel.get("targets", [])]
    return queries
