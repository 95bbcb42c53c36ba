"""The monitoring files against the code and the runbook (issue 16, items 2-4): every metric
name an alert, a dashboard panel or the KEDA trigger uses is one app/metrics.py exports; every
alert has a runbook section that exists and a promtool test that makes it fire and one that
keeps it silent; the dashboard is well formed and its queries parse (promtool); Prometheus
finds every replica by service discovery."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from app.metrics import OLDEST_WAITING_TASK  # importing it registers every metric

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "tests" / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "vocalborn.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
SCALED_OBJECT = ROOT / "deploy" / "kubernetes" / "worker-scaledobject.yaml"
# Names PromQL may use that are not metrics.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "le", "or",
                "and", "unless", "bool", "offset"}  # fmt: skip
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}


def exported_names() -> set[str]:
    """Every sample name the processes export: our metrics, prometheus_client's process and
    platform collectors, and Prometheus's own `up`."""
    names = {"up"}
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    for family in OLDEST_WAITING_TASK.describe():  # collected only while an API runs
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers of `expr` that name series: not functions, keywords, labels or strings."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = set()
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word in PROMQL_WORDS or re.fullmatch(r"\d+[smhd]?", word):
            continue
        names.add(word)
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {
        slug(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")
    }


def test_the_seeds_rules_and_the_new_ones_are_there() -> None:
    assert {rule["alert"] for rule in alert_rules()} >= {
        "AnalysisFailureRateHigh",
        "AnalysisQueueBacklog",
        "AnalysisWorkerDown",
        "AIServiceCircuitOpen",
        "AnalysisOldestTaskWaiting",
        "SSEConnectionsSaturated",
    }


def test_every_metric_used_is_exported() -> None:
    exported = exported_names()
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        used[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    for number, expr in enumerate(dashboard_exprs()):
        used[f"panel query {number}: {expr}"] = metric_names(expr)
    for document in yaml.safe_load_all(SCALED_OBJECT.read_text()):
        for trigger in document["spec"]["triggers"]:
            used[f"KEDA {trigger['type']}"] = metric_names(trigger["metadata"]["query"])
    assert all(used.values()), {where: names for where, names in used.items() if not names}
    unknown = {where: names - exported for where, names in used.items() if names - exported}
    assert unknown == {}


def test_the_name_check_catches_an_unknown_name() -> None:
    assert metric_names('sum by (le) (rate(vocalborn_nope_bucket{a="b"}[5m])) > 1') == {
        "vocalborn_nope_bucket"
    }
    assert "vocalborn_nope_bucket" not in exported_names()


def test_every_alert_has_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", rule["alert"]
        assert anchor in anchors, (rule["alert"], anchor)
    for link in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()):
        assert link in anchors, link  # the runbook's own links


def test_every_alert_fires_and_stays_silent_in_its_unit_tests() -> None:
    document = yaml.safe_load(ALERT_TESTS.read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for test in document["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - firing == set(), "no case where it fires"
    assert alerts - silent == set(), "no case where it stays silent"


def test_the_dashboard_is_well_formed() -> None:
    document = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {source["uid"] for source in datasources["datasources"]}
    assert document["uid"] and document["title"] and document["schemaVersion"] >= 36
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    # The list: queue depth and oldest waiting task, wait and processing, throughput
    # and failures by class, in flight per worker, AI latency and circuit, SSE connections.
    assert used >= {
        "vocalborn_queue_depth",
        "vocalborn_oldest_waiting_task_age_seconds",
        "vocalborn_task_wait_seconds_bucket",
        "vocalborn_task_processing_seconds_bucket",
        "vocalborn_tasks_finished_total",
        "vocalborn_task_errors_total",
        "vocalborn_tasks_in_flight",
        "vocalborn_ai_request_seconds_bucket",
        "vocalborn_ai_circuit_open",
        "vocalborn_stream_connections",
    }


def test_prometheus_discovers_every_replica() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for job, service, port_setting in (
        ("vocalborn-api", "api", "API_METRICS_PORT"),
        ("vocalborn-worker", "worker", "WORKER_METRICS_PORT"),
    ):
        assert "static_configs" not in jobs[job]
        [sd] = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A"
        assert str(sd["port"]) == compose[service]["environment"][port_setting]
        published = {str(p).rsplit(":", 1)[-1] for p in compose[service].get("ports", [])}
        assert str(sd["port"]) not in published  # internal only


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool missing under CI=true (apt-get install prometheus)")
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return found


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_and_unit_tests() -> None:
    tool = promtool()
    run(tool, "check", "rules", str(ALERTS))
    run(tool, "test", "rules", str(ALERT_TESTS))
    run(tool, "check", "config", str(MONITORING / "prometheus.yml"))


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel query as a recording rule: `promtool check rules` parses its PromQL."""
    tool = promtool()
    rules = [{"record": f"dashboard:query_{n}", "expr": e} for n, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run(tool, "check", "rules", str(path))
