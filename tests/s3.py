"""A local S3-compatible server for the object-storage tests: moto's
server, a separate process speaking the S3 HTTP API (SigV4, range reads,
checksums) on a free port."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass

import httpx

from tests.cluster import free_port, wait_until

ACCESS_KEY, SECRET_KEY, REGION = "pacs-test", "pacs-test-secret", "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    @classmethod
    def start(cls) -> S3Server:
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = cls(f"http://127.0.0.1:{port}", process)

        def up() -> bool:
            try:
                return httpx.get(f"{server.endpoint}/moto-api/", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, step=0.2)
        return server

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def new_bucket(self) -> str:
        name = f"pacs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: key -> size."""
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def env(self, location: str) -> dict[str, str]:
        """The settings that put a cluster's web cache at ``location``."""
        return {"PACS_WEBCACHE_URL": location, "PACS_S3_ENDPOINT_URL": self.endpoint, "PACS_S3_REGION": REGION,
                "PACS_S3_ACCESS_KEY_ID": ACCESS_KEY, "PACS_S3_SECRET_ACCESS_KEY": SECRET_KEY}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
