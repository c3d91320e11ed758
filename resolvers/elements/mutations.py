import dataclasses
from collections.abc import AsyncIterator, Callable

import strawberry
from strawberry.file_uploads import Upload

from gateway import element_lifecycle
from gateway.attachments import chunks_of
from gateway.element_lifecycle import ElementFields, check_mime
from gateway.errors import BadUserInput
from gateway.ids import new_id
from gateway.timestamps import format_timestamp
from gateway.validation import ELEMENT_LIMITS, check_input, checked_url
from resolvers.context import Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.scalars import DateTime, JSONObject
from resolvers.types import DeletePayload, Element


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


def _checked_input(input: ElementInput) -> ElementFields:
    if not input.name.strip():
        raise BadUserInput("`name` must not be empty", field="name")
    check_input(input, "input", ELEMENT_LIMITS)
    check_mime(input.mime)
    url = checked_url(input.url, "input.url")
    thread_id = parse_id(input.thread_id, "input.threadId")
    for_id = parse_optional_id(input.for_id, "input.forId")
    element_id = parse_optional_id(input.id, "input.id") or new_id()
    return ElementFields(
        id=element_id,
        thread_id=thread_id,
        name=input.name,
        for_id=for_id,
        type=input.type,
        mime=input.mime,
        display=input.display,
        size=input.size,
        language=input.language,
        page=input.page,
        props=input.props,
        url=url,
        chainlit_key=input.chainlit_key,
    )


def _content_of(file: Upload) -> Callable[[], AsyncIterator[bytes]]:
    """The uploaded file's chunks, opened when the element's lifecycle asks for them."""

    def open_file() -> AsyncIterator[bytes]:
        if not callable(getattr(file, "read", None)):
            raise BadUserInput("`file` must be a file part of a GraphQL multipart request", field="file")
        return chunks_of(file)

    return open_file


@strawberry.type
class ElementMutations:
    @strawberry.mutation(
        description="Attach an element: upload its bytes as `file` (GraphQL multipart request) or "
        "give `input.url`. The bytes are stored first and the row written after; if the row cannot "
        "be written, the bytes are removed. Retrying with the same id returns the stored element."
    )
    async def create_element(self, info: Info, input: ElementInput, file: Upload | None = None) -> Element:
        element = _checked_input(input)
        if (file is None) == (element.url is None):
            raise BadUserInput("give the bytes as `file`, or a `url` to attach by reference (one of them)")
        element = dataclasses.replace(element, mime=input.mime or getattr(file, "content_type", None))
        row = await element_lifecycle.create_element(
            info.context.unit_of_work,
            element=element,
            content=_content_of(file) if file is not None else None,
        )
        return Element.from_row(row)

    @strawberry.mutation(
        description="For large files: a URL to PUT the element's bytes to (straight to the bucket "
        "for S3), valid GATEWAY_URL_EXPIRY_SECONDS. The element exists once completeElementUpload "
        "checks the object."
    )
    async def request_element_upload(self, info: Info, input: ElementInput) -> ElementUpload:
        element = _checked_input(input)
        if element.url is not None:
            raise BadUserInput("an element by reference (`url`) has no bytes to upload; use createElement")
        upload = await element_lifecycle.request_upload(
            info.context.unit_of_work, element=element, base_url=info.context.base_url
        )
        return ElementUpload(
            element_id=strawberry.ID(upload.element_id),
            url=upload.url,
            method="PUT",
            headers=JSONObject(upload.headers),
            expires_at=DateTime(format_timestamp(upload.expires_at)),
        )

    @strawberry.mutation(
        description="Record an element whose bytes were PUT to the URL of requestElementUpload, "
        "after checking the object is there and within GATEWAY_MAX_UPLOAD_BYTES (over it, the object "
        "is removed). Retrying returns the element."
    )
    async def complete_element_upload(self, info: Info, id: strawberry.ID) -> Element:
        element_id = parse_id(id, "id")
        row = await element_lifecycle.complete_upload(info.context.unit_of_work, element_id=element_id)
        return Element.from_row(row)

    @strawberry.mutation(description="Delete an element; its stored object is deleted right after.")
    async def delete_element(self, info: Info, id: strawberry.ID) -> DeletePayload:
        element_id = parse_id(id, "id")
        await element_lifecycle.delete_element(info.context.unit_of_work, element_id=element_id)
        return DeletePayload(id=strawberry.ID(element_id))
