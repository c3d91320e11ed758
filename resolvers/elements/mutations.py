import contextlib
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import strawberry
from strawberry.file_uploads import Upload

from gateway import tables
from gateway.attachments import chunks_of
from gateway.data import elements, object_deletions
from gateway.data.access import EVERYTHING, not_yours
from gateway.data.threads import ensure_thread
from gateway.errors import BadUserInput, Conflict, NotFound
from gateway.ids import new_id
from gateway.storage import too_large
from gateway.timestamps import format_timestamp, utc_now
from gateway.validation import ELEMENT_LIMITS, check_input, checked_url
from resolvers.context import GatewayContext, Info, is_outage
from resolvers.ids import parse_id, parse_optional_id
from resolvers.scalars import DateTime, JSONObject
from resolvers.types import DeletePayload, Element

logger = logging.getLogger("gateway.elements")


@strawberry.input(description="An element (attachment) of a thread, optionally of one of its steps.")
class ElementInput:
    thread_id: strawberry.ID
    name: str
    id: strawberry.ID | None = strawberry.field(default=None, description="Chosen by the client, or made.")
    for_id: strawberry.ID | None = strawberry.field(default=None, description="The step it belongs to.")
    type: str | None = strawberry.field(
        default=None, description="e.g. image, file, pdf, audio, video, text."
    )
    mime: str | None = None
    display: str | None = strawberry.field(
        default=None, description="Chainlit's display: inline, side, page."
    )
    size: str | None = strawberry.field(
        default=None, description="Chainlit's display size: small, medium, large."
    )
    language: str | None = None
    page: int | None = None
    props: JSONObject | None = None
    url: str | None = strawberry.field(
        default=None, description="Attach by reference: the bytes stay at this URL (give no file)."
    )
    chainlit_key: str | None = strawberry.field(
        default=None, description="Chainlit's key of the file in its session (kept as given)."
    )


@strawberry.type(description="Where to PUT an element's bytes yourself, then call completeElementUpload.")
class ElementUpload:
    element_id: strawberry.ID
    url: str
    method: str = strawberry.field(description="Always PUT.")
    headers: JSONObject = strawberry.field(description="Headers the PUT must carry (its Content-Type).")
    expires_at: DateTime = strawberry.field(description="The URL works until then.")


COMPLETION_GRACE = timedelta(hours=1)  # after the URL expires, completing is still possible this long


def _element_values(
    input: ElementInput, *, element_id: str, thread_id: str, for_id: str | None, mime: str | None
) -> dict[str, Any]:
    return {
        "id": element_id,
        "threadId": thread_id,
        "forId": for_id,
        "type": input.type,
        "name": input.name,
        "mime": mime,
        "display": input.display,
        "size": input.size,
        "language": input.language,
        "page": input.page,
        "props": input.props,
        "url": input.url,
        "chainlitKey": input.chainlit_key,
        "createdAt": utc_now(),
    }


def _not_waiting(element_id: str) -> NotFound:
    return NotFound(f"no upload of element {element_id} is waiting to be completed", field="id")


async def _write_element(
    context: GatewayContext, values: dict[str, Any], *, completing_upload: bool = False
) -> tuple[tables.Element, bool]:
    """Write the row (creating its thread if missing), after checking again where it goes.

    A pending upload of the same element id ends here: completed (`completing_upload`, and then it
    must still be pending), or replaced by bytes given to createElement (its object is deleted).
    """
    async with context.write() as session:
        now = utc_now()
        pending_key = await object_deletions.take_pending_upload(
            session, element_id=values["id"], access=context.access, now=now
        )
        if completing_upload and pending_key is None:
            done = await elements.get_elements_by_ids(session, ids=[values["id"]], access=context.access)
            if values["id"] in done:  # a concurrent completion of the same upload won
                return done[values["id"]], False
            raise _not_waiting(values["id"])  # expired (the reaper may be removing it) meanwhile
        if pending_key is not None and pending_key != values["objectKey"]:
            await context.forget_objects(session, [pending_key])
        await ensure_thread(session, thread_id=values["threadId"], access=context.access, now=now)
        await elements.check_element_target(
            session, thread_id=values["threadId"], for_id=values["forId"], access=context.access
        )
        row, created = await elements.insert_element(session, values=values, access=context.access)
    return row, created


# A MIME type as HTTP headers carry it: type/subtype, then parameters, in printable ASCII.
MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[\x20-\x7e]*)?")


def _check_mime(mime: str | None) -> None:
    if mime is not None and not MIME_TYPE.fullmatch(mime):
        raise BadUserInput(f"{mime!r} is not a MIME type (type/subtype, in ASCII)", field="mime")


def _checked_input(input: ElementInput) -> tuple[str, str | None, str]:
    if not input.name.strip():
        raise BadUserInput("`name` must not be empty", field="name")
    check_input(input, "input", ELEMENT_LIMITS)
    _check_mime(input.mime)
    input.url = checked_url(input.url, "input.url")
    return (
        parse_id(input.thread_id, "input.threadId"),
        parse_optional_id(input.for_id, "input.forId"),
        parse_optional_id(input.id, "input.id") or new_id(),
    )


async def _discard(context: GatewayContext, object_key: str) -> None:
    """Remove an object no row will reference; if that fails, leave it to the reaper."""
    try:
        await context.files.store.delete(object_key)
    except Exception:
        logger.warning("could not delete unreferenced object %s now; queued", object_key, exc_info=True)
        async with context.write() as session:
            await context.forget_objects(session, [object_key])


@strawberry.type
class ElementMutations:
    @strawberry.mutation(
        description="Attach an element: upload its bytes as `file` (GraphQL multipart request) or "
        "give `input.url`. The bytes are stored first and the row written after; if the row cannot "
        "be written, the bytes are removed. Retrying with the same id returns the stored element."
    )
    async def create_element(self, info: Info, input: ElementInput, file: Upload | None = None) -> Element:
        context = info.context
        files = context.files
        thread_id, for_id, element_id = _checked_input(input)
        if (file is None) == (input.url is None):
            raise BadUserInput("give the bytes as `file`, or a `url` to attach by reference (one of them)")
        async with context.db.session() as session:  # refuse early, before any byte is stored
            await elements.check_element_target(
                session, thread_id=thread_id, for_id=for_id, access=context.access
            )
        object_key, size_bytes = None, None
        if file is not None and not callable(getattr(file, "read", None)):
            raise BadUserInput("`file` must be a file part of a GraphQL multipart request", field="file")
        mime = input.mime or (getattr(file, "content_type", None) if file is not None else None)
        _check_mime(mime)
        if file is not None:
            files.policy.check_mime(mime)
            object_key = files.new_key(thread_id, element_id)
            try:
                size_bytes = await files.store.put(
                    object_key, chunks_of(file), content_type=mime, max_bytes=files.policy.max_bytes
                )
            except Exception as error:
                if is_outage(error):
                    # The store timed out or went away mid-upload: it may still have kept some or
                    # all of it. No row names the key; the reaper deletes it once the store is back.
                    async with context.write() as session:
                        await context.forget_objects(session, [object_key])
                raise
        values = _element_values(input, element_id=element_id, thread_id=thread_id, for_id=for_id, mime=mime)
        values.update(objectKey=object_key, sizeBytes=size_bytes)
        created = False
        try:
            row, created = await _write_element(context, values)
        finally:
            if object_key is not None and not created:
                with contextlib.suppress(Exception):
                    await _discard(context, object_key)
        return Element.from_row(row)

    @strawberry.mutation(
        description="For large files: a URL to PUT the element's bytes to (straight to the bucket "
        "for S3), valid GATEWAY_URL_EXPIRY_SECONDS. The element exists once completeElementUpload "
        "checks the object."
    )
    async def request_element_upload(self, info: Info, input: ElementInput) -> ElementUpload:
        context = info.context
        files = context.files
        thread_id, for_id, element_id = _checked_input(input)
        if input.url is not None:
            raise BadUserInput("an element by reference (`url`) has no bytes to upload; use createElement")
        files.policy.check_mime(input.mime)
        async with context.db.session() as session:
            await elements.check_element_target(
                session, thread_id=thread_id, for_id=for_id, access=context.access
            )
        object_key = files.new_key(thread_id, element_id)
        target = await files.store.upload_url(
            object_key, mime=input.mime, expires_in=files.url_expiry_seconds, base_url=context.base_url
        )
        expires_at = datetime.fromtimestamp(target.expires_at, UTC)
        values = _element_values(
            input, element_id=element_id, thread_id=thread_id, for_id=for_id, mime=input.mime
        )
        async with context.write() as session:
            taken = await elements.get_elements_by_ids(session, ids=[element_id], access=EVERYTHING)
            if taken:
                if element_id not in await elements.get_elements_by_ids(
                    session, ids=[element_id], access=context.access
                ):
                    # Another user's element: the answer of every path that reaches beyond the
                    # caller (not "exists already", which would tell that it exists).
                    raise not_yours("element", element_id)
                raise Conflict(f"element {element_id} exists already", field="id")
            await object_deletions.add_pending_upload(
                session,
                upload=tables.PendingUpload(
                    id=element_id,
                    objectKey=object_key,
                    element={**values, "objectKey": object_key},
                    userId=context.caller.user_id,
                    store=files.store.location,
                    threadId=thread_id,
                    expiresAt=format_timestamp(expires_at + COMPLETION_GRACE),
                ),
            )
        return ElementUpload(
            element_id=strawberry.ID(element_id),
            url=target.url,
            method="PUT",
            headers=JSONObject(target.headers),
            expires_at=DateTime(format_timestamp(expires_at)),
        )

    @strawberry.mutation(
        description="Record an element whose bytes were PUT to the URL of requestElementUpload, "
        "after checking the object is there and within GATEWAY_MAX_UPLOAD_BYTES (over it, the object "
        "is removed). Retrying returns the element."
    )
    async def complete_element_upload(self, info: Info, id: strawberry.ID) -> Element:
        context = info.context
        files = context.files
        element_id = parse_id(id, "id")
        async with context.db.session() as session:
            pending = await object_deletions.get_pending_upload(
                session, element_id=element_id, access=context.access
            )
            if pending is None:  # completed already (a retry), or never requested
                done = await elements.get_elements_by_ids(session, ids=[element_id], access=context.access)
                if element_id in done:
                    return Element.from_row(done[element_id])
                raise _not_waiting(element_id)
        size = await files.store.size(pending.objectKey)
        if size is None:
            raise BadUserInput(f"nothing was uploaded for element {element_id} yet: PUT the bytes first")
        if size > files.policy.max_bytes:
            async with context.write() as session:
                await object_deletions.take_pending_upload(
                    session, element_id=element_id, access=context.access, now=utc_now()
                )
                await context.forget_objects(session, [pending.objectKey])
            raise too_large(files.policy.max_bytes)
        row, _ = await _write_element(context, {**pending.element, "sizeBytes": size}, completing_upload=True)
        return Element.from_row(row)

    @strawberry.mutation(description="Delete an element; its stored object is deleted right after.")
    async def delete_element(self, info: Info, id: strawberry.ID) -> DeletePayload:
        element_id = parse_id(id, "id")
        async with info.context.write() as session:
            object_key = await elements.delete_element(
                session, element_id=element_id, access=info.context.access
            )
            await info.context.forget_objects(session, [object_key] if object_key else [])
        return DeletePayload(id=strawberry.ID(element_id))
