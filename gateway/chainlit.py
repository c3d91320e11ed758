"""A Chainlit data layer that keeps the app's history in the gateway, over GraphQL:

    import chainlit as cl
    from gateway.chainlit import GatewayDataLayer

    @cl.data_layer
    def data_layer():
        return GatewayDataLayer(url="http://127.0.0.1:8000/graphql", api_key="...")

It needs the `chainlit` extra (`pip install 'conversation-gateway[chainlit]'`); the gateway itself never
imports this module. Every method of Chainlit's `BaseDataLayer` is implemented with Chainlit's
types and the semantics of its own SQL data layer, and what those layers get wrong is not copied:
`feedback: 0` filters, the thread list is paged by keyset (no page repeats or skips a thread),
an element's bytes are stored before its row and deleted with it.
"""

import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User

from gateway.client import DEFAULT_ATTEMPTS, GatewayClient, GatewayError, UploadFile

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

PAGE = 100  # the gateway's largest page

Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def queued(method: Method) -> Method:
    """Chainlit's `queue_until_user_message`, typed: in a websocket session, the call waits in the
    session's queue until the user's first message (Chainlit writes nothing for chats never
    started), then runs."""
    return cast(Method, queue_until_user_message()(method))  # type: ignore[no-untyped-call]


USER_FIELDS = "id identifier metadata createdAt"
STEP_FIELDS = """
id threadId parentId name type input output isError streaming waitForAnswer showInput language
command modes defaultOpen autoCollapse tags metadata generation createdAt start end
feedback { id forId value comment }"""
ELEMENT_FIELDS = """
id threadId forId type name mime size display language page props objectKey chainlitKey url"""
THREAD_FIELDS = "id createdAt updatedAt name userId userIdentifier tags metadata"

GET_USER = f"query($identifier: String!) {{ user(identifier: $identifier) {{ {USER_FIELDS} }} }}"
UPSERT_USER = f"mutation($input: UserInput!) {{ upsertUser(input: $input) {{ {USER_FIELDS} }} }}"
UPSERT_FEEDBACK = "mutation($input: FeedbackInput!) { upsertFeedback(input: $input) { id } }"
DELETE_FEEDBACK = "mutation($id: ID!) { deleteFeedback(id: $id) { id } }"
CREATE_ELEMENT = (
    "mutation($input: ElementInput!, $file: Upload) { createElement(input: $input, file: $file) { id } }"
)
GET_ELEMENT = f"query($id: ID!) {{ element(id: $id) {{ {ELEMENT_FIELDS} }} }}"
DELETE_ELEMENT = "mutation($id: ID!) { deleteElement(id: $id) { id } }"
UPSERT_STEP = "mutation($input: StepInput!) { upsertStep(input: $input) { id } }"
GET_STEP = f"query($id: ID!) {{ step(id: $id) {{ {STEP_FIELDS} }} }}"
DELETE_STEP = "mutation($id: ID!) { deleteStep(id: $id) { id } }"
THREAD_AUTHOR = "query($id: ID!) { thread(id: $id) { userIdentifier user { identifier } } }"
DELETE_THREAD = "mutation($id: ID!) { deleteThread(id: $id) { id } }"
UPSERT_THREAD = "mutation($input: ThreadInput!) { upsertThread(input: $input) { id } }"
LIST_THREADS = f"""
query($first: Int!, $after: String, $filter: ThreadFilter!) {{
  threads(first: $first, after: $after, filter: $filter) {{
    edges {{ node {{ {THREAD_FIELDS} }} }}
    pageInfo {{ hasNextPage startCursor endCursor }}
  }}
}}"""
GET_THREAD = f"""
query($id: ID!, $first: Int!, $steps: String, $elements: String) {{
  thread(id: $id) {{
    {THREAD_FIELDS}
    steps(first: $first, after: $steps) {{
      edges {{ node {{ {STEP_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }}
    }}
    elements(first: $first, after: $elements) {{
      edges {{ node {{ {ELEMENT_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }}
    }}
  }}
}}"""
FAVORITE_STEPS = f"""
query($userId: ID!, $first: Int!, $after: String) {{
  favoriteSteps(userId: $userId, first: $first, after: $after) {{
    edges {{ node {{ {STEP_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }}
  }}
}}"""

# StepDict keys the gateway stores, as StepInput fields of the same name.
STEP_INPUT_KEYS = (
    "id",
    "threadId",
    "parentId",
    "name",
    "type",
    "input",
    "output",
    "isError",
    "streaming",
    "waitForAnswer",
    "showInput",
    "language",
    "command",
    "modes",
    "defaultOpen",
    "autoCollapse",
    "tags",
    "metadata",
    "generation",
    "createdAt",
    "start",
    "end",
)
TIMESTAMP_KEYS = ("createdAt", "start", "end")


class GatewayDataLayer(BaseDataLayer):
    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        attempts: int = DEFAULT_ATTEMPTS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`url`: the gateway's GraphQL endpoint; `api_key`: a backend key (`gateway api-key
        create`). Calls that fail to connect, time out, or find the gateway's database or store
        unavailable are tried `attempts` times in all (see gateway.client)."""
        self.client = GatewayClient(
            url, api_key=api_key, timeout=timeout, attempts=attempts, transport=transport
        )

    # --- users ---

    async def get_user(self, identifier: str) -> PersistedUser | None:
        user = (await self.client.execute(GET_USER, {"identifier": identifier}))["user"]
        return _persisted_user(user) if user else None

    async def create_user(self, user: User) -> PersistedUser | None:
        """Create the user, or update the stored one: its metadata becomes the login's, as in
        Chainlit's own data layer (a role the identity provider no longer sends is not kept)."""
        metadata = dict(user.metadata or {})
        stored = await self.get_user(user.identifier)
        dropped = {key: None for key in (stored.metadata if stored else {}) if key not in metadata}
        input_ = {"identifier": user.identifier, "metadata": {**dropped, **metadata}}
        return _persisted_user((await self.client.execute(UPSERT_USER, {"input": input_}))["upsertUser"])

    # --- feedback ---

    async def upsert_feedback(self, feedback: Feedback) -> str:
        input_ = {"forId": feedback.forId, "value": int(feedback.value), "comment": feedback.comment}
        if feedback.id:
            input_["id"] = feedback.id
        data = await self.client.execute(UPSERT_FEEDBACK, {"input": input_})
        feedback_id: str = data["upsertFeedback"]["id"]
        return feedback_id

    async def delete_feedback(self, feedback_id: str) -> bool:
        """True if it was deleted; False if there was none."""
        return await self._delete(DELETE_FEEDBACK, feedback_id)

    # --- elements ---

    @queued
    async def create_element(self, element: "Element") -> None:
        """Store the element's bytes (its `content`, or the file at its `path`) in the gateway's
        storage, then its row; an element with only a `url` is kept by reference. A retry (same id)
        changes nothing, except for elements Chainlit updates in place (`CustomElement`,
        `TaskList`): those are replaced, bytes included."""
        if not element.thread_id:
            return
        if getattr(element, "updatable", False):
            await self._delete(DELETE_ELEMENT, element.id)
        input_: dict[str, Any] = {
            "id": element.id,
            "threadId": element.thread_id,
            "forId": element.for_id or None,  # TaskList sends "" for none
            "name": element.name or element.id,
            "type": getattr(element, "type", None),
            "mime": element.mime,
            "display": element.display,
            "size": element.size,
            "language": element.language,
            "page": getattr(element, "page", None),
            "props": getattr(element, "props", None) or None,
            "chainlitKey": element.chainlit_key,
        }
        mime = (
            element.mime
            or mimetypes.guess_type(element.path or element.name)[0]
            or "application/octet-stream"
        )
        input_["mime"] = mime if (element.content is not None or element.path) else element.mime
        upload: UploadFile | None = None
        if element.content is not None:
            content = element.content.encode() if isinstance(element.content, str) else element.content
            upload = UploadFile(element.name or element.id, content=content, mime=mime)
        elif element.path:
            upload = UploadFile(element.name or Path(element.path).name, path=Path(element.path), mime=mime)
        elif element.url:
            input_["url"] = element.url
        else:
            raise ValueError("an element needs content, a path or a url")
        await self.client.execute(
            CREATE_ELEMENT, {"input": input_}, files={"file": upload} if upload is not None else None
        )

    async def get_element(self, thread_id: str, element_id: str) -> "ElementDict | None":
        element = (await self.client.execute(GET_ELEMENT, {"id": element_id}))["element"]
        if element is None or element["threadId"] != thread_id:
            return None
        return _element_dict(element)

    @queued
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        """Delete the element (only if it is in `thread_id`, when given) and its stored bytes."""
        if thread_id is not None and await self.get_element(thread_id, element_id) is None:
            return
        await self._delete(DELETE_ELEMENT, element_id)

    # --- steps ---

    @queued
    async def create_step(self, step_dict: "StepDict") -> None:
        """Create the step (and its thread, if that is not written yet), or update it."""
        await self.client.execute(UPSERT_STEP, {"input": _step_input(step_dict)})

    @queued
    async def update_step(self, step_dict: "StepDict") -> None:
        await self.client.execute(UPSERT_STEP, {"input": _step_input(step_dict)})

    @queued
    async def delete_step(self, step_id: str) -> None:
        """Delete the step with its descendants, their feedback and elements (and stored bytes)."""
        await self._delete(DELETE_STEP, step_id)

    async def get_step(self, step_id: str) -> "StepDict | None":
        step = (await self.client.execute(GET_STEP, {"id": step_id}))["step"]
        return _step_dict(step) if step else None

    async def get_favorite_steps(self, user_id: str) -> list["StepDict"]:
        """The user's steps marked `metadata.favorite`, newest first."""
        steps: list[StepDict] = []
        after: str | None = None
        while True:
            variables = {"userId": user_id, "first": PAGE, "after": after}
            page = (await self.client.execute(FAVORITE_STEPS, variables))["favoriteSteps"]
            steps += [_step_dict(edge["node"]) for edge in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                return steps
            after = page["pageInfo"]["endCursor"]

    # --- threads ---

    async def get_thread_author(self, thread_id: str) -> str:
        """The identifier of the thread's user; "" if the thread or its user does not exist."""
        thread = (await self.client.execute(THREAD_AUTHOR, {"id": thread_id}))["thread"]
        if thread is None:
            return ""
        user = thread.get("user") or {}
        identifier: str = user.get("identifier") or thread.get("userIdentifier") or ""
        return identifier

    async def delete_thread(self, thread_id: str) -> None:
        """Delete the thread with its steps, elements (and their bytes) and feedback."""
        await self._delete(DELETE_THREAD, thread_id)

    async def list_threads(
        self, pagination: Pagination, filters: ThreadFilter
    ) -> PaginatedResponse[ThreadDict]:
        """One page of the user's threads, most recent activity first. `cursor` is the previous
        page's `endCursor`. Threads come without steps and elements (`get_thread` has them)."""
        if not filters.userId:
            raise ValueError("list_threads needs filters.userId: whose threads to list")
        thread_filter: dict[str, Any] = {"userId": filters.userId}
        if filters.search:
            thread_filter["search"] = filters.search
        if filters.feedback is not None:  # 0 (thumbs down) is a filter too
            thread_filter["feedback"] = int(filters.feedback)
        variables = {
            "first": min(pagination.first, PAGE),
            "after": pagination.cursor,
            "filter": thread_filter,
        }
        page = (await self.client.execute(LIST_THREADS, variables))["threads"]
        info = page["pageInfo"]
        return PaginatedResponse(
            pageInfo=PageInfo(
                hasNextPage=info["hasNextPage"], startCursor=info["startCursor"], endCursor=info["endCursor"]
            ),
            data=[_thread_dict(edge["node"], listed=True) for edge in page["edges"]],
        )

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        """The thread with all its steps (oldest first, with their feedback) and elements."""
        variables: dict[str, Any] = {"id": thread_id, "first": PAGE, "steps": None, "elements": None}
        thread = (await self.client.execute(GET_THREAD, variables))["thread"]
        if thread is None:
            return None
        steps = [edge["node"] for edge in thread["steps"]["edges"]]
        elements = [edge["node"] for edge in thread["elements"]["edges"]]
        more = {name: thread[name]["pageInfo"] for name in ("steps", "elements")}
        while any(info["hasNextPage"] for info in more.values()):
            variables["steps"] = more["steps"]["endCursor"] if more["steps"]["hasNextPage"] else None
            variables["elements"] = more["elements"]["endCursor"] if more["elements"]["hasNextPage"] else None
            page = (await self.client.execute(GET_THREAD, variables))["thread"]
            if page is None:  # deleted meanwhile
                return None
            for name, into in (("steps", steps), ("elements", elements)):
                if more[name]["hasNextPage"]:
                    into += [edge["node"] for edge in page[name]["edges"]]
                    more[name] = page[name]["pageInfo"]
        result = _thread_dict(thread, listed=False)
        result["steps"] = [_step_dict(step) for step in steps]
        result["elements"] = [_element_dict(element) for element in elements]
        return result

    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        """Create the thread or change the fields given. Metadata merges key by key; a key set to
        None is deleted."""
        input_: dict[str, Any] = {"id": thread_id}
        if name is None and metadata and isinstance(metadata.get("name"), str):
            name = metadata["name"]  # as Chainlit's own data layer does
        for key, value in (("name", name), ("userId", user_id), ("metadata", metadata), ("tags", tags)):
            if value is not None:
                input_[key] = value
        await self.client.execute(UPSERT_THREAD, {"input": input_})

    # --- the rest ---

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        await self.client.close()

    async def _delete(self, document: str, row_id: str) -> bool:
        """Delete a row; False if it did not exist (deleted already: a retry, or a race)."""
        try:
            await self.client.execute(document, {"id": row_id})
        except GatewayError as error:
            if error.code == "NOT_FOUND":
                return False
            raise
        return True


def _persisted_user(user: dict[str, Any]) -> PersistedUser:
    metadata = user.get("metadata") or {}
    return PersistedUser(
        id=user["id"],
        identifier=user["identifier"],
        createdAt=user.get("createdAt") or "",
        metadata=metadata,
        display_name=metadata.get("display_name"),
    )


def _timestamp(value: Any) -> Any:
    """Chainlit writes UTC without an offset now and then; the gateway wants one."""
    if (
        isinstance(value, str)
        and value
        and not (value.endswith("Z") or "+" in value[10:] or "-" in value[10:])
    ):
        return value + "Z"
    return value


def _step_input(step_dict: "StepDict") -> dict[str, Any]:
    """The StepInput for a Chainlit step. Empty input/output are left out, so an update sent
    after (or racing) a streamed step never blanks what was streamed."""
    given: dict[str, Any] = dict(step_dict)
    input_: dict[str, Any] = {}
    for key in STEP_INPUT_KEYS:
        value = given.get(key)
        if value is None or (key in ("input", "output") and value == ""):
            continue
        if key in TIMESTAMP_KEYS:
            value = _timestamp(value)
        elif key == "showInput" and isinstance(value, bool):
            value = "true" if value else "false"
        elif key == "generation" and not value:
            continue
        input_[key] = value
    return input_


def _step_dict(step: dict[str, Any]) -> "StepDict":
    show_input = step.get("showInput")
    if show_input in ("true", "false"):
        show_input = show_input == "true"
    feedback = step.get("feedback")
    result: dict[str, Any] = {key: step.get(key) for key in STEP_INPUT_KEYS if key not in ("showInput",)}
    result.update(
        showInput=show_input,
        input=step.get("input") or "",
        output=step.get("output") or "",
        metadata=step.get("metadata") or {},
        feedback=(
            {
                "id": feedback["id"],
                "forId": feedback["forId"],
                "value": feedback["value"],
                "comment": feedback["comment"],
            }
            if feedback
            else None
        ),
    )
    return result  # type: ignore[return-value]


def _element_dict(element: dict[str, Any]) -> "ElementDict":
    return {
        "id": element["id"],
        "threadId": element.get("threadId"),
        "type": element.get("type") or "file",
        "chainlitKey": element.get("chainlitKey"),
        "url": element.get("url"),
        "objectKey": element.get("objectKey"),
        "name": element["name"],
        "display": element.get("display") or "inline",
        "size": element.get("size"),
        "language": element.get("language"),
        "page": element.get("page"),
        "props": element.get("props") or {},
        "autoPlay": None,
        "playerConfig": None,
        "forId": element.get("forId"),
        "mime": element.get("mime"),
    }


def _thread_dict(thread: dict[str, Any], *, listed: bool) -> ThreadDict:
    # In the list, createdAt carries the last activity, as Chainlit's own data layer does: the
    # sidebar groups threads (Today, Yesterday, ...) by it, in the order they are listed.
    created_at = (thread.get("updatedAt") if listed else None) or thread.get("createdAt") or ""
    return ThreadDict(
        id=thread["id"],
        createdAt=created_at,
        name=thread.get("name"),
        userId=thread.get("userId"),
        userIdentifier=thread.get("userIdentifier"),
        tags=thread.get("tags") or [],
        metadata=thread.get("metadata") or {},
        steps=[],
        elements=[],
    )
