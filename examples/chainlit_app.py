"""A Chainlit app whose history (threads, messages, feedback, attachments) lives in the gateway.

From a clone of the repository (the gateway is installed from it, not from PyPI):

    python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[chainlit]'
    .venv/bin/gateway api-key create --name chainlit-app     # prints the key once
    .venv/bin/gateway serve                                  # http://127.0.0.1:8000/graphql
    export GATEWAY_API_KEY=...                               # (another shell) the key printed above
    export CHAINLIT_AUTH_SECRET=$(.venv/bin/chainlit create-secret | tail -1 | cut -d'"' -f2)
    .venv/bin/chainlit run examples/chainlit_app.py

Chainlit writes `.chainlit/`, `chainlit.md` and `.files/` in the working directory (ignored by git).

Chainlit shows a user's history only to a logged-in user: this example lets anyone in whose
password is DEMO_PASSWORD (default "demo"). Use your real authentication instead.
"""

import os

import chainlit as cl

from gateway.chainlit import GatewayDataLayer


@cl.data_layer
def data_layer() -> GatewayDataLayer:
    return GatewayDataLayer(
        url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000/graphql"),
        api_key=os.environ["GATEWAY_API_KEY"],
    )


@cl.password_auth_callback
def login(username: str, password: str) -> cl.User | None:
    if password == os.environ.get("DEMO_PASSWORD", "demo"):
        return cl.User(identifier=username)
    return None


@cl.on_chat_resume
async def resume(thread: cl.types.ThreadDict) -> None:
    """A thread picked from the sidebar: Chainlit shows its steps, read back from the gateway."""


@cl.on_message
async def echo(message: cl.Message) -> None:
    reply = cl.Message(content="")
    for word in f"You said: {message.content}".split():
        await reply.stream_token(word + " ")  # streamed; the gateway keeps the final output
    await reply.send()
    if message.elements:
        names = ", ".join(element.name for element in message.elements)
        await cl.Message(content=f"Stored your attachments in the gateway: {names}").send()
