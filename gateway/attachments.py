"""What the element mutations and fields need besides the database: the object store, the
reaper that deletes objects after their rows, and the upload policy."""

import fnmatch
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.config import Settings
from gateway.errors import BadUserInput
from gateway.ids import new_id
from gateway.reaper import ObjectReaper
from gateway.storage import ObjectStore

READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class UploadPolicy:
    max_bytes: int
    allowed_mime_types: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> "UploadPolicy":
        allowed = tuple(
            item.strip().lower() for item in settings.allowed_mime_types.split(",") if item.strip()
        )
        return cls(max_bytes=settings.max_upload_bytes, allowed_mime_types=allowed)

    def check_mime(self, mime: str | None) -> None:
        if not self.allowed_mime_types:
            return
        given = (mime or "").split(";")[0].strip().lower()
        if not any(fnmatch.fnmatchcase(given, pattern) for pattern in self.allowed_mime_types):
            raise BadUserInput(
                f"MIME type {mime!r} is not accepted; accepted: {', '.join(self.allowed_mime_types)}",
                field="mime",
            )


@dataclass
class Attachments:
    store: ObjectStore
    reaper: ObjectReaper
    policy: UploadPolicy
    url_expiry_seconds: int
    public_url: str | None = None

    async def read_url(self, object_key: str, *, name: str, mime: str | None, base_url: str) -> str:
        """A URL reading the object, signed now, expiring after GATEWAY_URL_EXPIRY_SECONDS; links to
        the gateway's own routes start at `base_url` (GatewayContext.base_url)."""
        return await self.store.read_url(
            object_key,
            name=name,
            mime=mime,
            expires_in=self.url_expiry_seconds,
            base_url=base_url,
        )

    def new_key(self, thread_id: str, element_id: str) -> str:
        """A key of its own for each upload: a retried upload, discarded as a duplicate, never
        overwrites (or removes) the object of the element it repeats."""
        return f"{self.store.key_prefix}threads/{thread_id}/elements/{element_id}/{new_id()}"


async def chunks_of(stream: object, size: int = READ_CHUNK) -> AsyncIterator[bytes]:
    """Chunks of an uploaded file (anything with `async read(size)`)."""
    read = stream.read  # type: ignore[attr-defined]
    while chunk := await read(size):
        yield chunk
