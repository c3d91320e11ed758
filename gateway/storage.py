"""Where element bytes live: a local directory (the default) or an S3 bucket (AWS, MinIO, R2, Ceph:
any S3-compatible endpoint), behind one interface.

Bytes are streamed, never held whole: a local file is written chunk by chunk; an S3 object over
PART_SIZE goes up as a multipart upload, one part in memory at a time. Read URLs are made when an
element is read, never stored: a presigned GET for S3, an HMAC-signed gateway route for local files.
"""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlparse

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from gateway.errors import PayloadTooLarge

if TYPE_CHECKING:
    from gateway.config import Settings

READ_CHUNK = 1024 * 1024
PART_SIZE = 8 * 1024 * 1024  # S3 parts (at least 5 MiB but the last); also the single-PUT threshold
FILES_ROUTE = "/files/"


def too_large(maximum: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is over the limit of {maximum} bytes", maximum=maximum)


@dataclass(frozen=True)
class UploadTarget:
    """Where a client PUTs an object itself: URL, headers to send, expiry (Unix seconds)."""

    url: str
    headers: dict[str, str]
    expires_at: int


class ObjectStore(ABC):
    """Objects by key. Deleting a missing object succeeds: deletions are retried until they do.

    Keys are stored whole in `elements."objectKey"` (the S3 prefix included, as Chainlit stores
    them), so elements a Chainlit app stored in the same bucket are read and deleted the same way.
    """

    key_prefix = ""

    @property
    @abstractmethod
    def location(self) -> str:
        """Which store this is (the bucket and its server, or the directory). Recorded with each
        deletion, so that only a gateway using this same store deletes the object."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open what the store keeps open for the process (the S3 client)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close it again."""

    @abstractmethod
    async def check(self) -> None:
        """Raise unless the store can be reached now (one cheap call, for /readyz)."""

    @abstractmethod
    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None, max_bytes: int
    ) -> int:
        """Store the chunks under `key`; returns the size. Over `max_bytes`: nothing is kept and
        PAYLOAD_TOO_LARGE is raised."""

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def size(self, key: str) -> int | None:
        """The object's size, None when there is no such object."""

    @abstractmethod
    def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, chunk by chunk (`gateway export --files`); FileNotFoundError when
        there is no such object."""

    @abstractmethod
    async def read_url(self, key: str, *, name: str, mime: str | None, expires_in: int, base_url: str) -> str:
        """A URL reading the object until it expires, served as `name` with type `mime`."""

    @abstractmethod
    async def upload_url(self, key: str, *, mime: str | None, expires_in: int, base_url: str) -> UploadTarget:
        """A URL a client PUTs the object's bytes to, until it expires."""


class UrlSigner:
    """HMAC-SHA256 signatures for the local store's routes (the key is GATEWAY_URL_SIGNING_SECRET)."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def sign(self, *parts: str) -> str:
        digest = hmac.new(self.secret, "\n".join(parts).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def valid(self, signature: str, *parts: str) -> bool:
        # As bytes: compare_digest refuses non-ASCII text (a forged link must get 403, not 500).
        return hmac.compare_digest(self.sign(*parts).encode(), signature.encode())


# Types a browser shows without running anything of the file's: these are served `inline`; any
# other (HTML, SVG, XML, scripts) as an `attachment`, so a file uploaded to a chat cannot run
# script on the gateway's (or the bucket's) origin.
INLINE_TYPE_PREFIXES = ("image/", "audio/", "video/")
INLINE_TYPES = {"application/pdf", "text/plain"}
NOT_INLINE_TYPES = {"image/svg+xml"}


def shown_inline(mime: str | None) -> bool:
    bare = (mime or "").split(";")[0].strip().lower()
    if bare in NOT_INLINE_TYPES:
        return False
    return bare in INLINE_TYPES or bare.startswith(INLINE_TYPE_PREFIXES)


def content_disposition(name: str, mime: str | None) -> str:
    """RFC 6266, with an ASCII fallback of the name (no control characters: they cannot be sent
    in a header) and the UTF-8 name; `inline` only for types that are safe to show."""
    fallback = "".join(
        char if char.isascii() and char.isprintable() and char not in '"\\' else "_" for char in name
    )
    disposition = "inline" if shown_inline(mime) else "attachment"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"


class LocalStore(ObjectStore):
    def __init__(self, root: Path, signer: UrlSigner) -> None:
        self.root = root.resolve()
        self.signer = signer

    @property
    def location(self) -> str:
        return self.root.as_uri()

    async def check(self) -> None:
        # Uploads create the directory, so it may not exist yet; what fails is a path that
        # cannot be one (a file in its place, a read-only or missing mount).
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"object key {key!r} leaves the storage directory")
        return path

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None, max_bytes: int
    ) -> int:
        path = self.path_of(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        size = 0
        handle = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, partial, path)
        except BaseException:
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(partial.unlink, True)
            raise
        return size

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_of(key).unlink, True)

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.path_of(key).stat)).st_size
        except FileNotFoundError:
            return None

    async def read(self, key: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self.path_of(key).open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    def _signed_url(self, base_url: str, key: str, params: dict[str, str], *signed: str) -> str:
        query = urlencode({**params, "signature": self.signer.sign(*signed)})
        return f"{base_url.rstrip('/')}{FILES_ROUTE}{quote(key)}?{query}"

    async def read_url(self, key: str, *, name: str, mime: str | None, expires_in: int, base_url: str) -> str:
        expires = str(int(time.time()) + expires_in)
        params = {"expires": expires, "name": name, "mime": mime or ""}
        return self._signed_url(base_url, key, params, "GET", key, expires, name, mime or "")

    async def upload_url(self, key: str, *, mime: str | None, expires_in: int, base_url: str) -> UploadTarget:
        expires = int(time.time()) + expires_in
        url = self._signed_url(base_url, key, {"expires": str(expires)}, "PUT", key, str(expires))
        return UploadTarget(url, {"Content-Type": mime} if mime else {}, expires)


@dataclass(frozen=True)
class S3Timeouts:
    """Every S3 call gives up after these (botocore's defaults wait a minute and more, retried):
    a frozen endpoint must cost a request seconds, and then an answer saying to retry."""

    connect_seconds: float = 5.0
    read_seconds: float = 30.0
    attempts: int = 2  # in all: one retry of a call that failed on the way

    def config(self) -> AioConfig:
        return AioConfig(
            connect_timeout=self.connect_seconds,
            read_timeout=self.read_seconds,
            retries={"mode": "standard", "total_max_attempts": self.attempts},
        )


def _without_expect_header(request: Any, **_: Any) -> None:
    if "Expect" in request.headers:
        del request.headers["Expect"]


class S3Store(ObjectStore):
    def __init__(
        self, bucket: str, prefix: str, endpoint_url: str | None, timeouts: S3Timeouts | None = None
    ) -> None:
        self.bucket = bucket
        self.key_prefix = prefix
        self.endpoint_url = endpoint_url
        self.timeouts = timeouts or S3Timeouts()
        self._session = aioboto3.Session()
        self._exit_stack = contextlib.AsyncExitStack()
        self._client: Any = None

    @property
    def location(self) -> str:
        # Keys hold the prefix, so the bucket and the server name the store.
        return f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    async def start(self) -> None:
        if self._client is None:
            # One client (one connection pool) for the process; credentials and region come from
            # the standard AWS variables and files.
            self._client = await self._exit_stack.enter_async_context(
                self._session.client("s3", endpoint_url=self.endpoint_url, config=self.timeouts.config())
            )
            # botocore asks S3 to confirm uploads before their body (`Expect: 100-continue`), and
            # aiohttp waits for that answer with no timeout: a frozen S3 would hang the request.
            self._client.meta.events.register("before-sign.s3", _without_expect_header)

    async def close(self) -> None:
        await self._exit_stack.aclose()
        self._client = None

    async def check(self) -> None:
        client = await self.client()
        await client.head_bucket(Bucket=self.bucket)

    async def client(self) -> Any:
        if self._client is None:
            await self.start()
        return self._client

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None, max_bytes: int
    ) -> int:
        client = await self.client()
        extra = {"ContentType": content_type} if content_type else {}
        target = {"Bucket": self.bucket, "Key": key}
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def upload_part(body: bytes) -> None:
            number = len(parts) + 1
            uploaded = await client.upload_part(**target, UploadId=upload_id, PartNumber=number, Body=body)
            parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})

        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                buffer += chunk
                while len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        created = await client.create_multipart_upload(**target, **extra)
                        upload_id = created["UploadId"]
                    part = bytes(buffer[:PART_SIZE])
                    del buffer[:PART_SIZE]
                    await upload_part(part)
            if upload_id is None:
                await client.put_object(**target, Body=bytes(buffer), **extra)
                return size
            if buffer:
                await upload_part(bytes(buffer))
            await client.complete_multipart_upload(
                **target, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return size
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await client.abort_multipart_upload(**target, UploadId=upload_id)
            raise

    async def delete(self, key: str) -> None:
        client = await self.client()
        await client.delete_object(Bucket=self.bucket, Key=key)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        client = await self.client()
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"no object {key!r} in {self.location}") from error
            raise
        body = answer["Body"]
        try:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def size(self, key: str) -> int | None:
        client = await self.client()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    async def read_url(self, key: str, *, name: str, mime: str | None, expires_in: int, base_url: str) -> str:
        client = await self.client()
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ResponseContentDisposition": content_disposition(name, mime),
        }
        if mime:
            params["ResponseContentType"] = mime
        url: str = await client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        return url

    async def upload_url(self, key: str, *, mime: str | None, expires_in: int, base_url: str) -> UploadTarget:
        client = await self.client()
        params = {"Bucket": self.bucket, "Key": key}
        if mime:
            params["ContentType"] = mime
        url: str = await client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in)
        return UploadTarget(url, {"Content-Type": mime} if mime else {}, int(time.time()) + expires_in)


def configured_store(settings: "Settings") -> "ObjectStore":
    """The object store the settings name (GATEWAY_STORAGE_URL and its S3 options)."""
    secret = settings.url_signing_secret
    return open_store(
        settings.storage_url,
        endpoint_url=settings.s3_endpoint_url,
        signing_secret=secret.get_secret_value().encode() if secret else None,
        s3_timeouts=S3Timeouts(settings.s3_connect_timeout_seconds, settings.s3_read_timeout_seconds),
    )


def open_store(
    storage_url: str,
    *,
    endpoint_url: str | None,
    signing_secret: bytes | None,
    s3_timeouts: S3Timeouts | None = None,
) -> ObjectStore:
    """`file://directory` (relative paths from the working directory) or `s3://bucket/prefix`."""
    parsed = urlparse(storage_url)
    if parsed.scheme == "file":
        directory = (parsed.netloc + parsed.path) or "."
        return LocalStore(Path(directory), UrlSigner(signing_secret or secrets.token_bytes(32)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{storage_url!r} names no bucket: use s3://bucket/prefix")
        prefix = parsed.path.strip("/")
        return S3Store(parsed.netloc, f"{prefix}/" if prefix else "", endpoint_url, s3_timeouts)
    raise ValueError(f"unsupported storage URL {storage_url!r}: use file://directory or s3://bucket/prefix")
