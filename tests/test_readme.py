"""The README's API examples, copied from it and run in its order against a fresh gateway: write,
read back, upload; and repeating the write does what the README warns it does."""

import json
import re
import shlex
from pathlib import Path

from tests.conftest import Api

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.DOTALL)


def block(language: str, containing: str) -> str:
    found = [text for kind, text in BLOCKS if kind == language and containing in text]
    assert len(found) == 1, f"the README should have one {language} block with {containing!r}"
    return found[0]


def curl_upload() -> tuple[dict[str, object], str, bytes]:
    """The upload example's operations, file name and file content, as its shell lines give them."""
    script = block("sh", "createElement")
    content = re.search(r"printf '(.*?)' > (\S+)", script)
    assert content is not None
    words = shlex.split(script.split("\n", 1)[1].replace("\\\n", " "))
    fields = dict(words[index + 1].split("=", 1) for index, word in enumerate(words) if word == "-F")
    assert fields["0"] == f"@{content[2]}"
    data = content[1].encode().decode("unicode_escape").encode()
    return json.loads(fields["operations"]), content[2], data


async def test_the_readme_examples_run_in_order_against_a_fresh_gateway(api: Api) -> None:
    write = block("graphql", "mutation Write")
    history = block("graphql", "query History")
    user = re.search(r'the variables `(\{"user": "[^"]+"\})`', README)
    assert user is not None, "the README should give History's variables"

    written = await api.ok(write)
    assert written["appendStepOutput"] == {"output": "Hel"}

    data = await api.ok(history, **json.loads(user[1]))
    [thread] = data["threads"]["edges"]
    assert thread["node"]["name"] == "First chat"
    [step] = thread["node"]["steps"]["edges"]
    assert step["node"]["output"] == "Hel"
    assert step["node"]["feedback"] == {"value": 0, "comment": "wrong"}

    operations, name, content = curl_upload()
    response = await api.http.post(
        "/graphql",
        headers={"Apollo-Require-Preflight": "true"},
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.f"]})},
        files={"0": (name, content)},
    )
    body = response.json()
    assert response.status_code == 200 and "errors" not in body, body
    element = body["data"]["createElement"]
    assert element["name"] == name
    read = await api.http.get(element["url"])
    assert read.content == content

    # As the README warns: the write again changes only the streamed output, which grows.
    again = await api.ok(write)
    assert again["appendStepOutput"] == {"output": "HelHel"}
    assert again["upsertThread"] == written["upsertThread"]
