"""S8: the service refuses to start in production with a missing or weak secret (the real
command, `uvicorn app.main:create_app --factory`, in a process of its own); the image runs as
a user that is not root, the same one the Kubernetes manifests name; the repository's secret
scan (detect-secrets against .secrets.baseline, as .ci/run runs it) finds nothing."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from app.embedded import free_port
from app.settings import ENV_EXAMPLE_JWT_SECRET, Settings
from tests.analysis.conftest import wait_for
from tests.security.conftest import figure

pytestmark = pytest.mark.scenario("S8")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
STRONG = secrets.token_urlsafe(48)

# Deliberately weak values, the kind the API must refuse (placeholders, not secrets).
PLACEHOLDER = "changeme"  # pragma: allowlist secret
WORD = "secret"  # pragma: allowlist secret

REFUSALS = {
    "no JWT_SECRET": {},
    "short JWT_SECRET": {"JWT_SECRET": "x" * 31},
    "placeholder JWT_SECRET": {"JWT_SECRET": PLACEHOLDER},
    ".env.example's JWT_SECRET": {"JWT_SECRET": ENV_EXAMPLE_JWT_SECRET},
    "weak STREAM_TOKEN_SECRET": {"JWT_SECRET": STRONG, "STREAM_TOKEN_SECRET": WORD},
    "RS256 without JWT_PUBLIC_KEY": {"JWT_ALGORITHM": "RS256", "JWT_SECRET": STRONG},
}


def _env(settings: Settings, environment: dict[str, str]) -> dict[str, str]:
    """This process's environment without any setting, the test's servers, then `environment`."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTING_NAMES}
    servers = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    return env | servers | {"ENVIRONMENT": "production"} | environment


async def _serve(tmp_path: Path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int]:
    """The API as deployed (`tmp_path` as its directory: no .env there), and its port."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(BIN / "uvicorn"), "app.main:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, port


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_s8_production_refuses_to_start_with_a_missing_or_weak_secret(
    settings: Settings, tmp_path: Path, case: str
) -> None:
    process, _ = await _serve(tmp_path, _env(settings, REFUSALS[case]))
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await _stop(process)
    assert process.returncode not in (0, None)
    assert b"InsecureConfiguration" in output, output.decode(errors="replace")[-2000:]
    figure("S8", f"production, {case}: refused to start (exit {process.returncode})")


async def test_s8_production_starts_with_a_strong_secret(
    settings: Settings, tmp_path: Path
) -> None:
    """The control: the same command and environment, a strong secret, serves."""
    env = _env(settings, {"JWT_SECRET": STRONG, "STREAM_TOKEN_SECRET": secrets.token_hex(32)})
    process, port = await _serve(tmp_path, env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def healthy() -> bool:
                assert process.returncode is None, "the API exited"
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(healthy, within=60, interval=0.1)
    finally:
        await _stop(process)


def test_s8_the_image_does_not_run_as_root() -> None:
    """The Dockerfile's last USER is a named user created with a fixed uid other than 0, after
    which nothing runs as root; compose does not override it; every Kubernetes pod runs as
    that uid (tests/ops/test_kubernetes.py checks runAsNonRoot and the rest)."""
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    users = [i for i, line in enumerate(instructions) if line.upper().startswith("USER ")]
    assert users, "the Dockerfile never sets USER: the image runs as root"
    user = instructions[users[-1]].split(None, 1)[1].strip()
    assert user not in {"root", "0", "0:0"} and not user.startswith(("root:", "0:"))
    created = re.search(rf"useradd\b[^\n]*--uid (\d+)[^\n]*\b{re.escape(user)}\b", "\n".join(lines))
    assert created, f"USER {user} is not created with a fixed uid (useradd --uid N {user})"
    uid = int(created.group(1))
    assert uid != 0

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert str(service.get("user", "")).split(":")[0] not in {"root", "0"}, name

    pods = 0
    for manifest in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            template = (document or {}).get("spec", {}).get("template", {})
            if document and document.get("kind") == "CronJob":
                template = document["spec"]["jobTemplate"]["spec"]["template"]
            pod = template.get("spec")
            if not pod or "containers" not in pod:
                continue
            image = {c["image"].split(":")[0] for c in pod["containers"]}
            if "vocalborn-analysis" not in " ".join(image):
                continue  # not our image
            assert pod["securityContext"]["runAsUser"] == uid, manifest.name
            pods += 1
    assert pods >= 3
    figure("S8", f"image user {user} (uid {uid}), the same in {pods} Kubernetes pod specs")


def _tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def _hook(*files: str) -> subprocess.CompletedProcess[str]:
    """detect-secrets-hook against the committed baseline, as .ci/run runs it (offline: no
    candidate is sent to its provider's API for verification)."""
    hook = str(BIN / "detect-secrets-hook")
    command = [hook, "--baseline", ".secrets.baseline", "--no-verify", *files]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_s8_the_secret_scan_finds_nothing(tmp_path: Path) -> None:
    files = _tracked_files()
    scan = _hook(*files)
    assert scan.returncode == 0, scan.stdout + scan.stderr

    # The control: the same scan does flag a planted key (written at run time, so that this
    # file holds no key of its own).
    planted = tmp_path / "settings_local.py"
    planted.write_text("AWS_ACCESS_KEY_ID = '" + "AKIA" + "Q" * 16 + "'\n")
    flagged = _hook(str(planted))
    assert flagged.returncode != 0 and "AWS" in flagged.stdout, flagged.stdout
    figure(
        "S8", f"detect-secrets over {len(files)} tracked files: 0 secrets (a planted key: found)"
    )
