"""An element's life, in one place: its bytes stored before its row (and removed if the row is not
written), an upload the client PUTs itself (requested, then completed exactly once), its deletion
(its object through the deletions outbox). Each function is one caller's, through its unit of work.

The store may go away mid-upload: an object stored then, which no row names, is queued for the
reaper (gateway.reaper), which deletes it once the store is back.
"""

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway import tables
from gateway.attachments import Attachments
from gateway.data import elements, object_deletions
from gateway.data.access import EVERYTHING, not_yours
from gateway.data.threads import ensure_thread
from gateway.errors import BadUserInput, Conflict, NotFound
from gateway.storage import too_large
from gateway.timestamps import format_timestamp, utc_now
from gateway.unit_of_work import UnitOfWork, is_outage

logger = logging.getLogger("gateway.elements")

COMPLETION_GRACE = timedelta(hours=1)  # after the URL expires, completing is still possible this long

# A MIME type as HTTP headers carry it: type/subtype, then parameters, in printable ASCII.
MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[\x20-\x7e]*)?")


def check_mime(mime: str | None) -> None:
    if mime is not None and not MIME_TYPE.fullmatch(mime):
        raise BadUserInput(f"{mime!r} is not a MIME type (type/subtype, in ASCII)", field="mime")


@dataclass(frozen=True)
class ElementFields:
    """An element's fields as its caller gives them, checked (ids parsed, `url` checked)."""

    id: str
    thread_id: str
    name: str
    for_id: str | None = None
    type: str | None = None
    mime: str | None = None
    display: str | None = None
    size: str | None = None
    language: str | None = None
    page: int | None = None
    props: dict[str, Any] | None = None
    url: str | None = None
    chainlit_key: str | None = None

    def values(self) -> dict[str, Any]:
        """The element's row, created now (without its object's key and size)."""
        return {
            "id": self.id,
            "threadId": self.thread_id,
            "forId": self.for_id,
            "type": self.type,
            "name": self.name,
            "mime": self.mime,
            "display": self.display,
            "size": self.size,
            "language": self.language,
            "page": self.page,
            "props": self.props,
            "url": self.url,
            "chainlitKey": self.chainlit_key,
            "createdAt": utc_now(),
        }


@dataclass(frozen=True)
class RequestedUpload:
    """Where to PUT an element's bytes (with these headers) until `expires_at`."""

    element_id: str
    url: str
    headers: dict[str, str]
    expires_at: datetime


def _files(uow: UnitOfWork) -> Attachments:
    if uow.attachments is None:  # pragma: no cover - the app always sets it
        raise RuntimeError("no object store configured")
    return uow.attachments


def _not_waiting(element_id: str) -> NotFound:
    return NotFound(f"no upload of element {element_id} is waiting to be completed", field="id")


async def _check_target(uow: UnitOfWork, element: ElementFields) -> None:
    """Refuse an element the caller may not attach where it says (a read, before any write)."""
    async with uow.db.session() as session:
        await elements.check_element_target(
            session, thread_id=element.thread_id, for_id=element.for_id, access=uow.access
        )


async def _write_element(
    uow: UnitOfWork, values: dict[str, Any], *, completing_upload: bool = False
) -> tuple[tables.Element, bool]:
    """Write the row (creating its thread if missing), after checking again where it goes.

    A pending upload of the same element id ends here: completed (`completing_upload`, and then it
    must still be pending), or replaced by bytes given to `create_element` (its object is deleted).
    """
    async with uow.write() as session:
        now = utc_now()
        pending_key = await object_deletions.take_pending_upload(
            session, element_id=values["id"], access=uow.access, now=now
        )
        if completing_upload and pending_key is None:
            done = await elements.get_elements_by_ids(session, ids=[values["id"]], access=uow.access)
            if values["id"] in done:  # a concurrent completion of the same upload won
                return done[values["id"]], False
            raise _not_waiting(values["id"])  # expired (the reaper may be removing it) meanwhile
        if pending_key is not None and pending_key != values["objectKey"]:
            await uow.forget_objects(session, [pending_key])
        await ensure_thread(session, thread_id=values["threadId"], access=uow.access, now=now)
        await elements.check_element_target(
            session, thread_id=values["threadId"], for_id=values["forId"], access=uow.access
        )
        row, created = await elements.insert_element(session, values=values, access=uow.access)
    return row, created


async def _discard(uow: UnitOfWork, object_key: str) -> None:
    """Remove an object no row will reference; if that fails, leave it to the reaper."""
    try:
        await _files(uow).store.delete(object_key)
    except Exception:
        logger.warning("could not delete unreferenced object %s now; queued", object_key, exc_info=True)
        async with uow.write() as session:
            await uow.forget_objects(session, [object_key])


async def create_element(
    uow: UnitOfWork,
    *,
    element: ElementFields,
    content: Callable[[], AsyncIterator[bytes]] | None = None,
) -> tables.Element:
    """Attach an element: its bytes (`content`, opened once the element's place is checked) or
    its `url` (by reference), one of them. The bytes are stored first and the row written after;
    if the row is not written, the bytes are removed. The same id again returns the stored row."""
    files = _files(uow)
    await _check_target(uow, element)  # refuse early, before any byte is stored
    chunks = content() if content is not None else None
    check_mime(element.mime)
    object_key, size_bytes = None, None
    if chunks is not None:
        files.policy.check_mime(element.mime)
        object_key = files.new_key(element.thread_id, element.id)
        try:
            size_bytes = await files.store.put(
                object_key, chunks, content_type=element.mime, max_bytes=files.policy.max_bytes
            )
        except Exception as error:
            if is_outage(error):
                # The store timed out or went away mid-upload: it may still have kept some or
                # all of it. No row names the key; the reaper deletes it once the store is back.
                async with uow.write() as session:
                    await uow.forget_objects(session, [object_key])
            raise
    values = element.values()
    values.update(objectKey=object_key, sizeBytes=size_bytes)
    created = False
    try:
        row, created = await _write_element(uow, values)
    finally:
        if object_key is not None and not created:
            with contextlib.suppress(Exception):
                await _discard(uow, object_key)
    return row


async def request_upload(uow: UnitOfWork, *, element: ElementFields, base_url: str) -> RequestedUpload:
    """A URL to PUT the element's bytes to (straight to the bucket for S3), valid the configured
    URL expiry; the upload waits, as the caller's, until `complete_upload` (or its expiry, plus
    COMPLETION_GRACE). `base_url`: the gateway's own URL, for the local store's upload route."""
    files = _files(uow)
    files.policy.check_mime(element.mime)
    await _check_target(uow, element)
    object_key = files.new_key(element.thread_id, element.id)
    target = await files.store.upload_url(
        object_key, mime=element.mime, expires_in=files.url_expiry_seconds, base_url=base_url
    )
    expires_at = datetime.fromtimestamp(target.expires_at, UTC)
    values = element.values()
    async with uow.write() as session:
        taken = await elements.get_elements_by_ids(session, ids=[element.id], access=EVERYTHING)
        if taken:
            if element.id not in await elements.get_elements_by_ids(
                session, ids=[element.id], access=uow.access
            ):
                # Another user's element: the answer of every path that reaches beyond the
                # caller (not "exists already", which would tell that it exists).
                raise not_yours("element", element.id)
            raise Conflict(f"element {element.id} exists already", field="id")
        await object_deletions.add_pending_upload(
            session,
            upload=tables.PendingUpload(
                id=element.id,
                objectKey=object_key,
                element={**values, "objectKey": object_key},
                userId=uow.access.user_id,
                store=files.store.location,
                threadId=element.thread_id,
                expiresAt=format_timestamp(expires_at + COMPLETION_GRACE),
            ),
        )
    return RequestedUpload(
        element_id=element.id, url=target.url, headers=target.headers, expires_at=expires_at
    )


async def complete_upload(uow: UnitOfWork, *, element_id: str) -> tables.Element:
    """The element whose bytes were PUT to the URL of `request_upload`, once the object is there
    and within the upload limit (over it, the object is removed). Completed exactly once: a retry,
    or a concurrent completion, returns the element."""
    files = _files(uow)
    async with uow.db.session() as session:
        pending = await object_deletions.get_pending_upload(session, element_id=element_id, access=uow.access)
        if pending is None:  # completed already (a retry), or never requested
            done = await elements.get_elements_by_ids(session, ids=[element_id], access=uow.access)
            if element_id in done:
                return done[element_id]
            raise _not_waiting(element_id)
    size = await files.store.size(pending.objectKey)
    if size is None:
        raise BadUserInput(f"nothing was uploaded for element {element_id} yet: PUT the bytes first")
    if size > files.policy.max_bytes:
        async with uow.write() as session:
            await object_deletions.take_pending_upload(
                session, element_id=element_id, access=uow.access, now=utc_now()
            )
            await uow.forget_objects(session, [pending.objectKey])
        raise too_large(files.policy.max_bytes)
    row, _ = await _write_element(uow, {**pending.element, "sizeBytes": size}, completing_upload=True)
    return row


async def delete_element(uow: UnitOfWork, *, element_id: str) -> None:
    """Delete the element's row; its stored object is deleted right after it commits."""
    async with uow.write() as session:
        object_key = await elements.delete_element(session, element_id=element_id, access=uow.access)
        await uow.forget_objects(session, [object_key] if object_key else [])
