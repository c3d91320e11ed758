"""The `gateway` command: serve, migrate, schema."""

import argparse
import asyncio
import logging
import sys

from gateway.config import Settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level.upper() != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    host = args.host or settings.host
    port = args.port or settings.port
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    where = settings.database_url.split("@")[-1]  # never print a password
    print(f"gateway: database {where}", file=sys.stderr)
    print(f"gateway: GraphiQL at http://{shown_host}:{port}/graphql", file=sys.stderr)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())
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
    args = parser.parse_args(argv)
    settings = Settings()
    _configure_logging(settings.log_level)
    return int(args.run(settings, args))


if __name__ == "__main__":
    raise SystemExit(main())
