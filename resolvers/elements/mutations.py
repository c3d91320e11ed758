import contextlib
import logging

import strawberry
from strawberry.file_uploads import Upload

from gateway.attachments import chunks_of
from gateway.data import elements, object_deletions
from gateway.data.threads import ensure_thread
from gateway.errors import BadUserInput
from gateway.ids import new_id
from gateway.timestamps import utc_now
from resolvers.context import GatewayContext, Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.scalars import JSONObject
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


async def _discard(context: GatewayContext, object_key: str) -> None:
    """Remove an object no row will reference; if that fails, leave it to the reaper."""
    files = context.files
    try:
        await files.store.delete(object_key)
    except Exception:
        logger.warning("could not delete unreferenced object %s now; queued", object_key, exc_info=True)
        async with context.db.transaction() as session:
            await object_deletions.enqueue_deletions(session, object_keys=[object_key], now=utc_now())
        files.reaper.kick()


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
        thread_id = parse_id(input.thread_id, "input.threadId")
        for_id = parse_optional_id(input.for_id, "input.forId")
        element_id = parse_optional_id(input.id, "input.id") or new_id()
        if not input.name.strip():
            raise BadUserInput("`name` must not be empty", field="name")
        if (file is None) == (input.url is None):
            raise BadUserInput("give the bytes as `file`, or a `url` to attach by reference (one of them)")
        async with context.db.session() as session:  # refuse early, before any byte is stored
            await elements.check_element_target(
                session, thread_id=thread_id, for_id=for_id, access=context.access
            )
        object_key, size_bytes = None, None
        mime = input.mime or (getattr(file, "content_type", None) if file is not None else None)
        if file is not None:
            files.policy.check_mime(mime)
            object_key = files.new_key(thread_id, element_id)
            size_bytes = await files.store.put(
                object_key, chunks_of(file), content_type=mime, max_bytes=files.policy.max_bytes
            )
        values = {
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
            "objectKey": object_key,
            "sizeBytes": size_bytes,
            "createdAt": utc_now(),
        }
        created = False
        try:
            async with context.write() as session:
                now = utc_now()
                await ensure_thread(session, thread_id=thread_id, access=context.access, now=now)
                await elements.check_element_target(
                    session, thread_id=thread_id, for_id=for_id, access=context.access
                )
                row, created = await elements.insert_element(session, values=values, access=context.access)
        finally:
            if object_key is not None and not created:
                with contextlib.suppress(Exception):
                    await _discard(context, object_key)
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
