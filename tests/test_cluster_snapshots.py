"""Snapshots of partitions in a directory and in S3-compatible storage (moto's server)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from integration_support import FixedLabeler
from kafka_support import MotoS3

from egressd.cluster.snapshots import (
    CorruptSnapshot,
    DirectoryStore,
    S3Store,
    SnapshotTooLarge,
    parse_s3_url,
    sigv4_headers,
)
from egressd.config import parse_config
from egressd.errors import StateError
from egressd.pipeline import Engine

KEYS = {"AWS_ACCESS_KEY_ID": "egressd", "AWS_SECRET_ACCESS_KEY": "egressd"}


def test_the_signature_is_the_one_botocore_computes() -> None:
    botocore = pytest.importorskip("botocore")
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    del botocore
    url = "http://127.0.0.1:9000/bucket/egressd/partials-0.json"
    when = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
    payload = b'{"version": 1}'
    ours = sigv4_headers(
        "PUT",
        url,
        payload,
        region="eu-west-2",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token="token",
        now=when,
    )
    request = AWSRequest(method="PUT", url=url, data=payload)
    signer = S3SigV4Auth(
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "token"),
        "s3",
        "eu-west-2",
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        signer.add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == ours["x-amz-content-sha256"]
    assert ours["authorization"] == request.headers["Authorization"]


def test_s3_urls() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/egressd/prod") == ("bucket", "egressd/prod/")
    with pytest.raises(ValueError):
        parse_s3_url("https://bucket/x")


async def test_a_directory_store_round_trips_and_tells_corrupt_from_missing(
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "parts")
    assert await store.load("p-0") is None
    await store.save("p-0", {"version": 1, "cluster": {"position": 5}})
    loaded = await store.load("p-0")
    assert loaded is not None and loaded["cluster"] == {"position": 5}
    (tmp_path / "parts" / "p-1.json").write_text("{not json")
    with pytest.raises(CorruptSnapshot):
        await store.load("p-1")
    await store.discard("p-1", "test")
    assert await store.load("p-1") is None


async def test_a_directory_store_does_not_read_a_snapshot_over_max_size(
    tmp_path: Path,
) -> None:
    # A sparse 1 GB file costs no disk; reading it whole would cost 1 GB of memory (and
    # parsing it more). It is refused from its size, before it is read.
    store = DirectoryStore(tmp_path, max_size=1_000_000)
    with (tmp_path / "p-0.json").open("wb") as file:
        file.truncate(1_000_000_000)
    with pytest.raises(SnapshotTooLarge) as error:
        await store.load("p-0")
    assert "state.max_size" in str(error.value)
    assert isinstance(error.value, CorruptSnapshot)  # the partition starts afresh
    await store.save("p-1", {"version": 1})
    assert await store.load("p-1") == {"version": 1, "saved_at": mock.ANY}


async def test_a_directory_store_refuses_a_snapshot_that_is_not_a_regular_file(
    tmp_path: Path,
) -> None:
    # Before: a FIFO at a snapshot's name blocked its load for ever (the partition's
    # detection with it). Now it is corrupt: moved aside, and the partition starts afresh.
    import asyncio
    import os

    store = DirectoryStore(tmp_path)
    fifo = tmp_path / "p-0.json"
    os.mkfifo(fifo)
    with pytest.raises(CorruptSnapshot, match="not a regular file"):
        try:
            async with asyncio.timeout(5):
                await store.load("p-0")
        except TimeoutError:
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))  # let the reader thread end
            pytest.fail("the load blocked on a FIFO")
    await store.discard("p-0", "test")
    assert await store.load("p-0") is None


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    server.start("snapshots")
    yield server
    server.stop()


async def test_an_s3_store_round_trips_through_a_real_endpoint(moto: MotoS3) -> None:
    store = S3Store("s3://snapshots/egressd/test", moto.endpoint, "eu-west-2", KEYS)
    try:
        assert await store.load("partials-0") is None
        size = await store.save("partials-0", {"version": 1, "big": 2**70, "cluster": {}})
        assert size > 0
        loaded = await store.load("partials-0")
        assert loaded is not None
        assert loaded["big"] == 2**64 - 1  # saturated, as the state file does
        assert store.where("partials-0") == "s3://snapshots/egressd/test/partials-0.json"
    finally:
        await store.close()


async def test_an_unreachable_or_missing_bucket_is_a_state_error(moto: MotoS3) -> None:
    missing = S3Store("s3://no-such-bucket", moto.endpoint, "eu-west-2", KEYS)
    gone = S3Store("s3://snapshots", "http://127.0.0.1:9", "eu-west-2", KEYS)
    try:
        for store in (missing, gone):
            with pytest.raises(StateError) as error:
                await store.save("p", {"v": 1})
            assert not isinstance(error.value, CorruptSnapshot)
        with pytest.raises(StateError):
            await gone.load("p")
    finally:
        await missing.close()
        await gone.close()


async def test_an_s3_object_over_max_size_is_not_read(moto: MotoS3) -> None:
    writer = S3Store("s3://snapshots/egressd/limit", moto.endpoint, "eu-west-2", KEYS)
    reader = S3Store(
        "s3://snapshots/egressd/limit", moto.endpoint, "eu-west-2", KEYS, max_size=1000
    )
    try:
        size = await writer.save("partials-0", {"version": 1, "pad": "x" * 5000})
        assert size > 1000
        with pytest.raises(SnapshotTooLarge) as error:
            await reader.load("partials-0")
        assert f"{size:,} bytes" in str(error.value)
        await writer.save("partials-0", {"version": 1})
        assert await reader.load("partials-0") == {"version": 1}
    finally:
        await writer.close()
        await reader.close()


async def test_a_snapshot_of_baselines_is_read_with_its_records_decoded_apart(
    tmp_path: Path,
) -> None:
    """A partition's snapshot ends in its baselines' records, which a load decodes apart
    (in pieces, in a thread): the engine restored from it is the one saved."""
    engine = Engine(parse_config(""), FixedLabeler())
    for i in range(200):
        for k in range(3):
            engine.baselines.observe((f"g{i % 3}", f"C{i}"), 1_773_000_000.0 + 300 * k, 1000 + i)
    saved = engine.snapshot()
    store = DirectoryStore(tmp_path / "parts")
    await store.save("p-0", {**saved, "cluster": {"position": 5}})
    assert (tmp_path / "parts" / "p-0.json").read_bytes().endswith(b'"}}')
    loaded = await store.load("p-0")
    assert loaded is not None and loaded.pop("cluster") == {"position": 5}
    assert isinstance(loaded["baselines"]["records"], np.ndarray)
    again = Engine(parse_config(""), FixedLabeler())
    again.restore(loaded)
    assert again.snapshot() == saved
