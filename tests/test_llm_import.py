"""`gateway import llm`: a logs.db written by the `llm` package's own code (0.36: its migrations and
`Response.log_to_db`, with a tiny model defined here), and the older `conversations`/`responses`
tables of earlier versions (llm's own schema, rows as those versions wrote them), imported through
the CLI and read back through GraphQL, on SQLite and PostgreSQL."""

from pathlib import Path
from typing import Any

import llm
import pytest
import sqlite_utils
from llm.models import Model
from ulid import ULID

from tests.conftest import Api
from tests.test_transfer import gateway

THREADS = """
query {
  threads(first: 5, orderBy: {field: CREATED_AT, direction: ASC}) {
    edges { node { id name tags metadata
      steps(first: 10) { edges { node { id type name input output parentId generation metadata isError
        children(first: 3) { edges { node { id type name input output } } } } } }
      elements(first: 3) { edges { node { name mime sizeBytes forId } } }
    } }
  }
}"""


class Echo(Model):
    """A model that answers `echo: <prompt>`, or first calls the `lookup` tool when it has tools."""

    model_id = "echo-tiny"
    can_stream = True
    supports_tools = True
    attachment_types = {"image/png"}  # noqa: RUF012 - llm's own class attribute

    class Options(llm.Options):
        temperature: float | None = None

    def execute(self, prompt: Any, stream: bool, response: Any, conversation: Any) -> Any:
        response.set_usage(input=len(prompt.prompt or ""), output=3, details={"cached": 1})
        if prompt.tools and not prompt.tool_results:
            response.add_tool_call(
                llm.ToolCall(name="lookup", arguments={"q": prompt.prompt}, tool_call_id="call-1")
            )
            yield ""
            return
        yield "echo: "
        yield prompt.prompt or ""


def lookup(q: str) -> str:
    "Look up q."
    return f"found {q}"


def write_log(path: Path) -> tuple[Any, Any]:
    """A chat with a system prompt, options and an attachment, and a tool-using chain."""
    db = sqlite_utils.Database(path)
    model = Echo()
    chat = model.conversation()
    first = chat.prompt("Bonjour ünï", system="Be brief", temperature=0.5)
    first.text()
    first.log_to_db(db)
    second = chat.prompt("Again", attachments=[llm.Attachment(content=b"\x89PNG bytes", type="image/png")])
    second.text()
    second.log_to_db(db)
    tools = model.conversation(tools=[lookup])
    chain = tools.chain("use a tool")
    chain.text()
    for response in chain.responses():
        response.log_to_db(db)
    db.close()
    return chat, model


def write_legacy_rows(path: Path) -> str:
    """Rows as llm before 0.36 logged them (conversations, responses, tool calls and results) in the
    tables llm's migrations create."""
    db = sqlite_utils.Database(path)
    conversation = str(ULID.from_timestamp(1_600_000_000)).lower()
    first, second = (str(ULID.from_timestamp(1_600_000_000 + n)).lower() for n in (1, 2))
    db["conversations"].insert({"id": conversation, "name": "legacy chat", "model": "gpt-old"})
    common = {"model": "gpt-old", "conversation_id": conversation, "input_tokens": 4, "output_tokens": 6}
    db["responses"].insert_all(
        [
            {
                **common,
                "id": first,
                "prompt": "old question",
                "system": "sys",
                "response": "old answer",
                "options_json": '{"temperature": 1}',
                "duration_ms": 1500,
                "datetime_utc": "2020-09-13T12:26:41.000000",
            },
            {
                **common,
                "id": second,
                "prompt": "weather?",
                "response": "",
                "datetime_utc": "2020-09-13T12:26:42.500000",
            },
        ]
    )
    db["tool_calls"].insert(
        {"response_id": second, "name": "weather", "arguments": '{"city": "Oslo"}', "tool_call_id": "t1"}
    )
    db["tool_results"].insert(
        {"response_id": second, "name": "weather", "output": "rain", "tool_call_id": "t1"}
    )
    db.close()
    return conversation


def uuid_of(ulid: str) -> str:
    return str(ULID.from_str(ulid.upper()).to_uuid())


async def test_llm_log_threads_become_threads_and_a_grown_log_adds_only_what_is_new(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "logs.db"
    chat, _model = write_log(log)
    legacy = write_legacy_rows(log)
    database = sqlite_utils.Database(log)
    assert database["responses"].count == 2  # only the legacy rows: llm 0.36 writes the new tables
    llm_threads = [row["id"] for row in database.query("select id from threads order by id")]
    turns = [row["id"] for row in database.query("select id from turns order by id")]
    database.close()

    result = await gateway("import", "llm", str(log), database_url=database_url)
    assert result.returncode == 0, result.stderr.decode()
    stderr = result.stderr.decode()
    assert "threads: 3 created" in stderr and "elements: 1 created" in stderr

    threads = [edge["node"] for edge in (await api.ok(THREADS))["threads"]["edges"]]
    by_name = {thread["name"]: thread for thread in threads}
    assert set(by_name) == {"legacy chat", "Bonjour ünï", "use a tool"}
    # ULIDs become UUIDs bit for bit, in the same order, and stay in metadata.
    ids = [by_name["Bonjour ünï"]["id"], by_name["use a tool"]["id"]]
    assert sorted(ids) == [uuid_of(ulid) for ulid in llm_threads] == ids
    assert by_name["Bonjour ünï"]["metadata"] == {"llm": {"thread_id": llm_threads[0]}, "model": "echo-tiny"}
    assert by_name["legacy chat"]["id"] == uuid_of(legacy)

    chat_steps = [edge["node"] for edge in by_name["Bonjour ünï"]["steps"]["edges"]]
    assert [(step["type"], step["output"]) for step in chat_steps] == [
        ("user_message", "Bonjour ünï"),
        ("assistant_message", "echo: Bonjour ünï"),
        ("user_message", "Again"),
        ("assistant_message", "echo: Again"),
    ]
    assert chat_steps[0]["metadata"]["system"] == "Be brief"
    assert chat_steps[1]["id"] == uuid_of(turns[0])
    assert chat_steps[1]["generation"]["model"] == "echo-tiny"
    assert chat_steps[1]["generation"]["settings"] == {"temperature": 0.5}
    assert chat_steps[1]["generation"]["inputTokenCount"] == len("Bonjour ünï")
    [image] = [edge["node"] for edge in by_name["Bonjour ünï"]["elements"]["edges"]]
    assert image["mime"] == "image/png" and image["sizeBytes"] == len(b"\x89PNG bytes")
    assert image["forId"] == chat_steps[2]["id"]

    tool_steps = [edge["node"] for edge in by_name["use a tool"]["steps"]["edges"]]
    [call] = [edge["node"] for step in tool_steps for edge in step["children"]["edges"]]
    assert (call["type"], call["name"], call["output"]) == ("tool", "lookup", "found use a tool")
    assert call["input"] == '{"q": "use a tool"}'

    legacy_steps = [edge["node"] for edge in by_name["legacy chat"]["steps"]["edges"]]
    assert [(step["type"], step["output"]) for step in legacy_steps if step["parentId"] is None] == [
        ("user_message", "old question"),
        ("assistant_message", "old answer"),
        ("user_message", "weather?"),
        ("assistant_message", ""),
    ]
    assert legacy_steps[1]["generation"]["settings"] == {"temperature": 1}
    [weather] = legacy_steps[3]["children"]["edges"]
    assert (weather["node"]["name"], weather["node"]["output"]) == ("weather", "rain")

    # The log grows: importing it again adds the new turn and changes nothing else.
    database = sqlite_utils.Database(log)
    later = chat.prompt("More")
    later.text()
    later.log_to_db(database)
    database.close()
    result = await gateway("import", "llm", str(log), database_url=database_url)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "threads: 0 created, 1 updated, 2 unchanged, 0 failed" in stderr
    assert "steps: 2 created, 0 updated, 12 unchanged, 0 failed" in stderr
    assert "elements: 0 created, 0 updated, 1 unchanged" in stderr
    result = await gateway("import", "llm", str(log), database_url=database_url)
    assert "threads: 0 created, 0 updated, 3 unchanged, 0 failed" in result.stderr.decode()


async def test_the_default_log_is_llms_own(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))
    result = await gateway("import", "llm", database_url=database_url)
    assert result.returncode == 1
    assert f"there is no llm log at {tmp_path / 'logs.db'}".encode() in result.stderr
    write_log(tmp_path / "logs.db")
    result = await gateway("import", "llm", database_url=database_url)
    assert result.returncode == 0, result.stderr.decode()
    assert (
        b"threads: 2 created" in result.stderr
        or b"threads: 0 created, 0 updated, 2 unchanged" in result.stderr
    )
