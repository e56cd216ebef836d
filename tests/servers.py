"""Real S3 and GCS protocol servers on 127.0.0.1, as pytest fixtures.

Import the fixtures into a test module or conftest
(``from servers import s3_server, s3_bucket, gcs_server, gcs_bucket``).
Each server fixture yields plain fsspec storage options (a dict that s3fs or
gcsfs accepts as-is, and that pickles); ``options["endpoint_url"]`` is where
the server listens. The servers live for the session; every test gets its own
bucket from ``s3_bucket`` / ``gcs_bucket`` so that tests never see each other.
"""

import os

# gcsfs probes the bucket type over gRPC unless this is off, and that probe waits
# ~60 s on every call against an emulator. It is read when gcsfs is imported.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
# Never send test traffic for 127.0.0.1 through a proxy, whatever the host says.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

S3_REGION = "us-east-1"


def unique_bucket(prefix: str = "bv") -> str:
    """A fresh bucket name, valid on S3 and GCS (lowercase, 3-63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def clear_fsspec_caches() -> None:
    """Forget cached filesystem instances and their directory listings."""
    for protocol in ("s3", "gs", "memory"):
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError):
            continue
        cls.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """moto's S3 server; yields s3fs storage options pointing at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield {
            "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_REGION},
            "key": "testing",
            "secret": "testing",
            "endpoint_url": endpoint,
        }
    finally:
        clear_fsspec_caches()
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[dict[str, Any]]:
    """gcp-storage-emulator (in memory); yields gcsfs storage options pointing at it."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    port = server._api._httpd.server_address[1]  # the emulator has no public accessor
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield {"endpoint_url": endpoint, "token": "anon"}
    finally:
        clear_fsspec_caches()
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: dict[str, Any]) -> str:
    """A new, empty S3 bucket for one test; returns its URL ("s3://name")."""
    name = unique_bucket()
    fs = fsspec.filesystem("s3", **s3_server)
    fs.call_s3("create_bucket", Bucket=name)  # mkdir sends a LocationConstraint us-east-1 refuses
    fs.invalidate_cache()
    return f"s3://{name}"


@pytest.fixture
def gcs_bucket(gcs_server: dict[str, Any]) -> str:
    """A new, empty GCS bucket for one test; returns its URL ("gs://name")."""
    name = unique_bucket()
    fs = fsspec.filesystem("gs", **gcs_server)
    fs.mkdir(name)
    fs.invalidate_cache()
    return f"gs://{name}"
