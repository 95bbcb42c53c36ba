"""deploy/kubernetes/ checked offline (issue 16, item 6): every manifest against the Kubernetes
schemas with kubernetes-validate (the KEDA ScaledObject, a CRD, skipped there explicitly and
checked here instead), the kustomization lists every file, and the properties the issue asks
for: probes, resource requests, non-root, secrets by reference, metrics ports, KEDA on the
queue depth."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.liveness import TTL_PERIODS
from app.settings import Settings
from tests.ops.test_monitoring import ROOT, promtool

KUBERNETES = ROOT / "deploy" / "kubernetes"
CRDS = {"worker-scaledobject.yaml"}  # no schema in kubernetes-validate: checked below
NOT_RESOURCES = {"kustomization.yaml"}
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
SECRET_NAMES = {
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "REDIS_SENTINEL_PASSWORD",
    "JWT_SECRET",
    "AI_SERVICE_API_KEY",
}


def manifests() -> list[Path]:
    return sorted(KUBERNETES.glob("*.yaml"))


def resources() -> list[dict[str, Any]]:
    return [
        document
        for path in manifests()
        if path.name not in NOT_RESOURCES
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def kind(name: str) -> list[dict[str, Any]]:
    return [document for document in resources() if document["kind"] == name]


def deployment(component: str) -> dict[str, Any]:
    [found] = [
        d
        for d in kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def test_kubernetes_validate_strict() -> None:
    files = [str(p) for p in manifests() if p.name not in CRDS | NOT_RESOURCES]
    done = subprocess.run(
        [str(VALIDATE), "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(files) >= 8


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in manifests()} - NOT_RESOURCES


def test_pods_run_as_non_root_with_requests_and_secrets_by_reference() -> None:
    assert kind("Secret") == []  # created out of band, never in the repository
    templates = [d["spec"]["template"]["spec"] for d in kind("Deployment")]
    templates += [j["spec"]["template"]["spec"] for j in kind("Job")]
    assert len(templates) == 4  # api, worker, analyzer, migrate
    for pod in templates:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            for variable in container.get("env", []):
                assert "value" not in variable or variable["name"] not in SECRET_NAMES
                if variable["name"] in SECRET_NAMES:
                    assert variable["valueFrom"]["secretKeyRef"]["name"] == "vocalborn-secrets"
    config = kind("ConfigMap")[0]["data"]
    assert not SECRET_NAMES & set(config)


def test_probes() -> None:
    [api] = deployment("api")["spec"]["template"]["spec"]["containers"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [worker] = deployment("worker")["spec"]["template"]["spec"]["containers"]
    assert worker["livenessProbe"]["exec"]["command"] == ["vocalborn", "worker-check"]
    [analyzer] = deployment("analyzer")["spec"]["template"]["spec"]["containers"]
    assert analyzer["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert analyzer["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_a_dead_worker_fails_its_liveness_check_within_a_probe_period() -> None:
    """`vocalborn worker-check` reads the worker's heartbeat key, written every
    WORKER_HEARTBEAT_SECONDS and kept TTL_PERIODS of them: kept longer than the probes' period,
    a dead worker would pass a probe after it died; the compose and Dockerfile health checks
    and the Kubernetes probe all run it."""
    ttl = TTL_PERIODS * Settings().worker_heartbeat_seconds
    [worker] = deployment("worker")["spec"]["template"]["spec"]["containers"]
    assert worker["livenessProbe"]["exec"]["command"] == ["vocalborn", "worker-check"]
    assert ttl <= worker["livenessProbe"]["periodSeconds"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    check = compose["services"]["worker"]["healthcheck"]
    assert check["test"] == ["CMD", "vocalborn", "worker-check"]
    assert ttl <= int(check["interval"].rstrip("s"))
    dockerfile = (ROOT / "Dockerfile").read_text()
    worker_stage = dockerfile.split("AS worker\n", 1)[1].split("\nFROM ", 1)[0]
    [healthcheck] = [line for line in worker_stage.splitlines() if line.startswith("HEALTHCHECK")]
    assert healthcheck.endswith('CMD ["vocalborn", "worker-check"]')
    assert ttl <= int(healthcheck.split("--interval=")[1].split("s", 1)[0])
    assert compose["services"]["worker"]["build"]["target"] == "worker"


def test_metrics_ports_are_internal_and_annotated() -> None:
    config = next(c for c in kind("ConfigMap") if c["metadata"]["name"] == "vocalborn-config")
    services = {s["metadata"]["name"]: s for s in kind("Service")}
    for component, setting in (("api", "API_METRICS_PORT"), ("worker", "WORKER_METRICS_PORT")):
        template = deployment(component)["spec"]["template"]
        port = template["metadata"]["annotations"]["prometheus.io/port"]
        assert port == config["data"][setting]
        [container] = template["spec"]["containers"]
        assert int(port) in {p["containerPort"] for p in container["ports"]}
        service = services.get(f"vocalborn-{component}")
        if service is not None:  # the API's Service: the public port only
            assert int(port) not in {p["port"] for p in service["spec"]["ports"]}
            assert all(p["targetPort"] != "metrics" for p in service["spec"]["ports"])
    assert config["data"]["ENVIRONMENT"] == "production"
    assert config["data"]["DOCS_ENABLED"] == "false"


def test_pod_disruption_budgets_cover_api_and_worker() -> None:
    covered = {
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for pdb in kind("PodDisruptionBudget")
    }
    assert covered >= {"api", "worker"}


def test_keda_scales_the_worker_deployment_on_queue_depth() -> None:
    [scaled] = kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    worker = deployment("worker")
    assert (target["kind"], target["name"]) == ("Deployment", worker["metadata"]["name"])
    assert scaled["metadata"]["namespace"] == worker["metadata"]["namespace"]
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "vocalborn_queue_depth" in trigger["metadata"]["query"]
    assert float(trigger["metadata"]["threshold"]) > 0
    assert trigger["metadata"]["serverAddress"].startswith("http")


def test_the_cluster_prometheus_config_uses_pod_discovery(tmp_path: Path) -> None:
    [config_map] = [c for c in kind("ConfigMap") if c["metadata"]["name"] == "vocalborn-prometheus"]
    text = config_map["data"]["prometheus.yml"]
    config = yaml.safe_load(text)
    [job] = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    keep = {
        tuple(r["source_labels"]): r for r in job["relabel_configs"] if r.get("action") == "keep"
    }
    assert keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]["regex"] == "true"
    tool = promtool()
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copy(ROOT / "monitoring" / "alerts.yml", tmp_path / "alerts.yml")
    done = subprocess.run(
        [tool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if "field kubernetes_sd_configs not found" in done.stdout + done.stderr:
        # Debian's prometheus package is built without Kubernetes service discovery.
        pytest.skip("this promtool has no kubernetes_sd_configs (Debian's build)")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_deployment_runs_the_healing_worker() -> None:
    """The worker that survives Redis outages is `python -m worker` (worker/healing.py);
    `arq worker.main.WorkerSettings` is arq's own Worker, which exits at its first failed poll.
    The Dockerfile, compose, Kubernetes and `vocalborn up` must all run the same command."""
    command = ["python", "-m", "worker"]
    [worker] = deployment("worker")["spec"]["template"]["spec"]["containers"]
    assert worker["command"] == command
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["services"]["worker"]["command"] == command
    dockerfile = (ROOT / "Dockerfile").read_text()
    worker_stage = dockerfile.split("AS worker\n", 1)[1].split("\nFROM ", 1)[0]
    [cmd] = [line for line in worker_stage.splitlines() if line.startswith("CMD")]
    assert cmd == 'CMD ["python", "-m", "worker"]'
    launcher = (ROOT / "app" / "launcher.py").read_text()
    assert 'spawn("worker", "worker")' in launcher  # python -m worker (Child)
    assert "WorkerSettings" not in launcher
