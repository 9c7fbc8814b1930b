"""The Prometheus rules the chart mounts: valid, and every alert unit-tested.

promtool comes from Debian's ``prometheus`` package, which ``tests/setup_tools.sh``
installs (``make test`` runs it). Without it the tests skip locally and fail in CI.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parent.parent
RULES = REPO / "charts" / "batchgrid" / "files" / "prometheus-rules.yaml"
RULE_TESTS = sorted((Path(__file__).parent / "promtool").glob("*.yaml"))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing; tests/setup_tools.sh installs it")
        pytest.skip("promtool is missing; run tests/setup_tools.sh")
    return found


def alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule
    }


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_passes_for_every_alert() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    cases = [
        test
        for path in RULE_TESTS
        for group in yaml.safe_load(path.read_text())["tests"]
        for test in group.get("alert_rule_test", [])
    ]

    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}

    assert alert_names() == {
        "BatchgridBacklogGrowing",
        "BatchgridTaskFailureRatioHigh",
        "BatchgridQueueWaitHigh",
        "BatchgridNoWorkers",
    }
    assert firing == silent == alert_names()


def test_every_alert_has_a_severity_a_duration_and_annotations() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]

    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert re.fullmatch(r"\d+m", alert["for"]), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
