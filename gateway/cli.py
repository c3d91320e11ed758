"""The `gateway` command: serve, migrate, schema, and api-key create/list/revoke."""

import argparse
import asyncio
import logging
import sys

from gateway.config import Settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level.upper() != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)


async def _prepared(settings: Settings) -> None:
    """Migrate (unless told not to), then refuse open development mode off loopback, before the
    server starts, so the refusal is a message and an exit code, not a server's traceback."""
    from gateway.auth import decide_open_mode
    from gateway.database import Database
    from gateway.migrate import upgrade_database

    if settings.auto_migrate:
        await upgrade_database(settings.database_url)
    db = Database(settings.database_url)
    try:
        await decide_open_mode(settings, db)
    finally:
        await db.dispose()


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.auth import OpenModeRefused

    settings = settings.model_copy(
        update={"host": args.host or settings.host, "port": args.port or settings.port}
    )
    try:
        asyncio.run(_prepared(settings))
    except OpenModeRefused as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2
    shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    where = settings.database_url.split("@")[-1]  # never print a password
    print(f"gateway: database {where}", file=sys.stderr)
    if settings.graphiql:
        print(f"gateway: GraphiQL at http://{shown_host}:{settings.port}/graphql", file=sys.stderr)
    app = create_app(settings.model_copy(update={"auto_migrate": False}))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.migrate import upgrade_database

    before, after = asyncio.run(upgrade_database(settings.database_url))
    if before == after:
        print(f"gateway: database already at revision {after}")
    else:
        print(
            f"gateway: database migrated from {before or 'an empty or Chainlit schema'} to revision {after}"
        )
    return 0


def _schema(_settings: Settings, _args: argparse.Namespace) -> int:
    from resolvers.schema import schema

    print(schema.as_str())
    return 0


async def _api_key_command(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.auth import api_key_prefix, hash_api_key, new_api_key
    from gateway.data import api_keys
    from gateway.database import Database
    from gateway.errors import GatewayError
    from gateway.migrate import upgrade_database
    from gateway.timestamps import utc_now

    if settings.auto_migrate:
        await upgrade_database(settings.database_url)
    db = Database(settings.database_url)
    try:
        if args.action == "create":
            key = new_api_key()
            async with db.transaction() as session:
                await api_keys.create_api_key(
                    session,
                    name=args.name,
                    key_hash=hash_api_key(key),
                    prefix=api_key_prefix(key),
                    now=utc_now(),
                )
            print(key)  # alone on stdout, so a script can capture it
            print(
                f"gateway: created API key {args.name!r}. It is shown only this once; only its hash is "
                "stored. (A gateway already running in open development mode needs a restart to require "
                "keys.)",
                file=sys.stderr,
            )
        elif args.action == "list":
            async with db.session() as session:
                keys = await api_keys.list_api_keys(session)
            print(f"{'name':<24} {'key starts':<12} {'created':<25} revoked")
            for item in keys:
                print(
                    f"{item.name:<24} {item.prefix + '...':<12} {item.createdAt:<25} {item.revokedAt or '-'}"
                )
        else:
            async with db.transaction() as session:
                revoked = await api_keys.revoke_api_key(session, name_or_id=args.name, now=utc_now())
            print(f"gateway: revoked API key {revoked.name!r} ({revoked.prefix}...)", file=sys.stderr)
    except GatewayError as error:
        print(f"gateway: {error.message}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    return 0


def _api_key(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_api_key_command(settings, args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="GraphQL persistence gateway for chat apps.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the gateway (migrates the database first unless told not to)"
    )
    serve.add_argument("--host", help="address to bind (default GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default GATEWAY_PORT or 8000)")
    serve.set_defaults(run=_serve)
    migrate = commands.add_parser("migrate", help="create or upgrade the schema (also a Chainlit database)")
    migrate.set_defaults(run=_migrate)
    schema = commands.add_parser("schema", help="print the GraphQL SDL (the content of schema.graphql)")
    schema.set_defaults(run=_schema)
    api_key = commands.add_parser("api-key", help="create, list and revoke backends' API keys")
    actions = api_key.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="what the key is for, e.g. chat-backend")
    actions.add_parser("list", help="list keys: id, name, first characters, created, revoked")
    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("name", help="the live key's name, or a key's id")
    api_key.set_defaults(run=_api_key)
    args = parser.parse_args(argv)
    settings = Settings()
    _configure_logging(settings.log_level)
    return int(args.run(settings, args))


if __name__ == "__main__":
    raise SystemExit(main())
