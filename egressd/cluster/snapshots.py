"""Where the detect role keeps each partition's state: a directory or S3-compatible storage.

A snapshot is the state file format (:mod:`egressd.baseline.statefile`) plus the offsets it
covers. In a directory it is written as the state file is (temporary file, fsync, rename);
in object storage one PUT replaces the object whole, so a reader sees the old or the new
snapshot, never a torn one. Every detect process of a deployment must reach the same
store, which is what object storage is for.

The S3 client is small on purpose: path-style GET and PUT of one object, signed with AWS
Signature Version 4, over aiohttp (already a dependency), so no SDK is needed at run time.
Credentials come from the standard ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
(optionally) ``AWS_SESSION_TOKEN`` environment variables.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from egressd.baseline.statefile import (
    MAX_STATE_SIZE,
    encode_state,
    move_aside,
    open_regular,
    parse_state,
    save_state,
)
from egressd.errors import DecodeError, StateError, StateTooLarge

log = logging.getLogger("egressd.cluster.snapshots")

_TIMEOUT = 30.0


class CorruptSnapshot(StateError):
    """The snapshot was read and cannot be used (as opposed to: could not be read now)."""


class SnapshotTooLarge(CorruptSnapshot, StateTooLarge):
    """The snapshot is larger than ``state.max_size``: it was not read (nor parsed).

    Parsing JSON takes several times its size in memory, so a huge object (or sparse file)
    could exhaust it; like a corrupt snapshot, the partition starts afresh.
    """


def _too_large(where: str, size: int, max_size: int) -> str:
    return (
        f"snapshot {where} holds {size:,} bytes, over state.max_size ({max_size:,}); "
        "not read (raise state.max_size to use it)"
    )


def _parse(blob: bytes, where: str) -> dict[str, Any]:
    """The snapshot in ``blob``, its baselines' records decoded (see :func:`parse_state`);
    run in a thread: a large one takes seconds, in pieces that let the event loop run."""
    try:
        data = parse_state(blob, decode_records=True)
    except DecodeError as exc:
        raise CorruptSnapshot(f"{where} is not usable: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise CorruptSnapshot(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CorruptSnapshot(f"{where} does not hold a JSON object")
    return data


class SnapshotStore(Protocol):
    """Loads and saves one JSON object per name."""

    def where(self, name: str) -> str:
        """Where the snapshot ``name`` lives, for messages."""
        ...

    async def load(self, name: str) -> dict[str, Any] | None:
        """The snapshot, None when there is none; CorruptSnapshot when it cannot be used,
        StateError when it cannot be read now. The baselines' records may come decoded
        (bytes, see :func:`~egressd.baseline.statefile.parse_state`): for an engine to
        restore, not to save again."""
        ...

    async def save(self, name: str, data: dict[str, Any]) -> int:
        """Replace the snapshot whole; returns its size. Raises StateError. The baselines'
        records may be :class:`~egressd.baseline.statefile.Base64Records` (a save's
        snapshot): encode it in a thread (:func:`~egressd.baseline.statefile.encode_state`),
        not on the event loop."""
        ...

    async def discard(self, name: str, reason: str) -> None:
        """An unusable snapshot: keep it out of the way (or leave it to be overwritten)."""
        ...

    async def close(self) -> None: ...


class DirectoryStore:
    """Snapshots as state files in one directory (one node, or a shared filesystem)."""

    def __init__(self, directory: Path, max_size: int = MAX_STATE_SIZE) -> None:
        self.directory = directory
        self.max_size = max_size

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def where(self, name: str) -> str:
        return str(self._path(name))

    async def load(self, name: str) -> dict[str, Any] | None:
        path = self._path(name)
        try:
            blob = await asyncio.to_thread(self._read, path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return await asyncio.to_thread(_parse, blob, str(path))

    def _read(self, path: Path) -> bytes:
        """The file's bytes; SnapshotTooLarge, before reading, when it is over max_size."""
        try:
            file = open_regular(path)  # a FIFO or device planted there: never blocks
        except StateError as exc:
            raise CorruptSnapshot(str(exc)) from None
        with file:
            size = os.fstat(file.fileno()).st_size
            if size > self.max_size:
                raise SnapshotTooLarge(_too_large(str(path), size, self.max_size))
            blob = file.read(self.max_size + 1)
        if len(blob) > self.max_size:  # it grew between the stat and the read
            raise SnapshotTooLarge(_too_large(str(path), len(blob), self.max_size))
        return blob

    async def save(self, name: str, data: dict[str, Any]) -> int:
        return await asyncio.to_thread(save_state, self._path(name), data)

    async def discard(self, name: str, reason: str) -> None:
        await asyncio.to_thread(move_aside, self._path(name), reason)

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- S3


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    method: str,
    url: str,
    payload: bytes,
    *,
    region: str,
    access_key: str,
    secret_key: str,
    session_token: str = "",
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers that sign a request to S3 with AWS Signature Version 4 (no query string)."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    day = when.strftime("%Y%m%d")
    parts = urlsplit(url)
    payload_hash = hashlib.sha256(payload).hexdigest()
    headers = {
        "host": parts.netloc,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
    }
    if session_token:
        headers["x-amz-security-token"] = session_token
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            "",
            "".join(f"{name}:{headers[name].strip()}\n" for name in names),
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "s3"), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    del headers["host"]  # aiohttp sends it; it was signed as it will be sent
    return headers


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix) of ``s3://bucket/prefix``; ValueError when it is not one."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parts.netloc, prefix


class S3Store:
    """Snapshots as objects ``<prefix><name>.json`` in an S3-compatible bucket."""

    def __init__(
        self,
        url: str,
        endpoint: str,
        region: str,
        environ: Mapping[str, str],
        max_size: int = MAX_STATE_SIZE,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.max_size = max_size
        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self.access_key = environ.get("AWS_ACCESS_KEY_ID", "")
        self.secret_key = environ.get("AWS_SECRET_ACCESS_KEY", "")
        self.session_token = environ.get("AWS_SESSION_TOKEN", "")
        self._session: aiohttp.ClientSession | None = None

    def _url(self, name: str) -> str:
        key = quote(f"{self.prefix}{name}.json", safe="/-_.~")
        return f"{self.endpoint}/{quote(self.bucket, safe='')}/{key}"

    def where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}.json"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT))
        return self._session

    def _headers(self, method: str, url: str, payload: bytes) -> dict[str, str]:
        return sigv4_headers(
            method,
            url,
            payload,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.session_token,
        )

    async def load(self, name: str) -> dict[str, Any] | None:
        url = self._url(name)
        try:
            async with self._client().get(url, headers=self._headers("GET", url, b"")) as reply:
                if reply.status == 404:
                    return None
                if reply.status != 200:
                    body = await reply.content.read(200)
                    raise StateError(
                        f"cannot read {self.where(name)}: HTTP {reply.status} {body!r}"
                    )
                body = await self._read(reply, name)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StateError(f"cannot read {self.where(name)}: {exc!r}") from exc
        return await asyncio.to_thread(_parse, body, self.where(name))

    async def _read(self, reply: aiohttp.ClientResponse, name: str) -> bytes:
        """The object's bytes; SnapshotTooLarge, before reading, when its Content-Length is
        over max_size, or as soon as more than max_size bytes arrive (no length given)."""
        size = reply.content_length
        if size is not None and size > self.max_size:
            raise SnapshotTooLarge(_too_large(self.where(name), size, self.max_size))
        chunks: list[bytes] = []
        received = 0
        while chunk := await reply.content.read(1 << 20):
            received += len(chunk)
            if received > self.max_size:
                raise SnapshotTooLarge(_too_large(self.where(name), received, self.max_size))
            chunks.append(chunk)
        return b"".join(chunks)

    async def save(self, name: str, data: dict[str, Any]) -> int:
        # (in a thread: the baselines' records text of a snapshot is encoded here)
        blob, clamped = await asyncio.to_thread(encode_state, data)
        if clamped:
            log.warning("%s: %d integer(s) saved at the 64-bit limit", self.where(name), clamped)
        url = self._url(name)
        headers = self._headers("PUT", url, blob)
        headers["content-type"] = "application/json"
        try:
            async with self._client().put(url, data=blob, headers=headers) as reply:
                body = await reply.read()
                if reply.status != 200:
                    raise StateError(
                        f"cannot save {self.where(name)}: HTTP {reply.status} {body[:200]!r}"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StateError(f"cannot save {self.where(name)}: {exc!r}") from exc
        return len(blob)

    async def discard(self, name: str, reason: str) -> None:
        # The next save replaces it; the object's versions (if the bucket keeps them) hold it.
        log.warning("%s is not usable (%s); it is ignored", self.where(name), reason)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
