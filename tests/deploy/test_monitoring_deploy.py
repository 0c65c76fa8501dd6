"""The shipped Prometheus files must stay valid: `promtool check rules` on the alerting
rules and `promtool check config` on the example scrape config (which loads them)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from paths import DEPLOY

PROMETHEUS_DIR = DEPLOY / "prometheus"
pytestmark = pytest.mark.e2e  # outside programs: promtool
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


@needs_promtool
def test_alert_rules_pass_promtool():
    done = subprocess.run(["promtool", "check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout + done.stderr


@needs_promtool
def test_example_config_passes_promtool():
    done = subprocess.run(["promtool", "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
