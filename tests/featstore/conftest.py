"""Fixtures for sharing tests: one small store per session, a real S3-compatible server on loopback
(moto's ThreadedMotoServer), and a `remote` fixture that runs each test against S3 and a local directory URL."""
from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass

import pytest

BUCKET = "featstore-test"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch the user's cache directory."""
    monkeypatch.setenv("FEATSTORE_CACHE_DIR", str(tmp_path / "user-cache"))


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory, bert, splits):
    """A complete zarr store: 3 splits over several segments, layers 1 and 2, a `label` column."""
    from featstore.extract import ExtractConfig, extract

    out = str(tmp_path_factory.mktemp("shared") / "sst2")
    extract(ExtractConfig(model=bert, data=splits, out=out, label_columns=["label"], id_column="id", layers="1,2",
                          max_length=24, segment_mb=0.03, progress=False))
    return out


@pytest.fixture(scope="session")
def shared_h5(tmp_path_factory, bert, splits):
    from featstore.extract import ExtractConfig, extract

    out = str(tmp_path_factory.mktemp("shared") / "sst2.h5")
    extract(ExtractConfig(model=bert, data=splits, out=out, label_columns=["label"], id_column="id", layers="1,2",
                          max_length=24, format="hdf5", progress=False))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the session; returns the standard AWS variables that point every client
    (ours, subprocesses) at it. Tests get them through `s3_env`, which sets them for that test only."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "featstore-test", "AWS_SECRET_ACCESS_KEY": "featstore-test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The S3 server's environment for one test (restored after it); returns the endpoint URL."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    return s3_server["AWS_ENDPOINT_URL"]


@dataclass
class Remote:
    """Where a test publishes: a fresh prefix on the S3 server or in a local directory, plus raw access to the
    objects (to damage them the way a bad disk or a bad actor would)."""

    kind: str
    base: str

    def url(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def fs(self, url: str):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        fs.invalidate_cache()
        return fs, path

    def read(self, url: str) -> bytes:
        fs, path = self.fs(url)
        return fs.cat_file(path)

    def write(self, url: str, data: bytes) -> None:
        fs, path = self.fs(url)
        if self.kind == "local":
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)

    def remove(self, *urls: str) -> None:
        fs, _ = self.fs(urls[0])
        fs.rm([self.fs(u)[1] for u in urls])

    def files(self, url: str) -> list[str]:
        fs, path = self.fs(url)
        try:
            return [p[len(path) + 1:] for p in fs.find(path)]
        except FileNotFoundError:
            return []


@pytest.fixture(params=["s3", "local"])
def remote(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        return Remote("s3", f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}")
    return Remote("local", "file://" + str(tmp_path / "published"))


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def kill_at(tmp_path):
    """Run a command with a pause point armed (featstore.testhooks), wait until the child reaches it, and
    SIGKILL it there: the child is killed at a known point, never raced."""
    import subprocess
    import time

    def run(cmd: list[str], point: str, timeout: float = 120) -> None:
        marker = tmp_path / f"paused-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "FEATSTORE_TEST_PAUSE": point, "FEATSTORE_TEST_PAUSE_FILE": str(marker)}
        with open(tmp_path / "child-stderr.txt", "w+b") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                deadline = time.monotonic() + timeout
                while not marker.exists():
                    if proc.poll() is not None:
                        err.seek(0)
                        pytest.fail(f"the child exited ({proc.returncode}) before reaching {point}: "
                                    + err.read().decode()[-2000:])
                    if time.monotonic() > deadline:
                        pytest.fail(f"the child did not reach {point} within {timeout} s")
                    time.sleep(0.01)
            finally:
                proc.kill()  # SIGKILL: no clean-up handler runs
                proc.wait()
        assert proc.returncode == -9

    return run
