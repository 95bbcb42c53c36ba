"""`vocalborn`: run the system (`up`), development commands (`migrate`, `users`, `token`,
`link`), operations (`workers`, `worker-check`) and the command-line client of the API
(`analyze`, `status`, `result`, `cancel`).

Exit codes of the client: 0 all succeeded, 1 any failed, 2 bad usage or input, 130
interrupted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import migrate
from app.auth import Unauthorized, decode_access_token, issue_access_token
from app.client.analyze import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Options
from app.client.api import Api, ApiError
from app.client.links import LINK_TOKEN_TTL_SECONDS, web_link
from app.db import create_engine, create_sessionmaker
from app.redis_client import RedisTarget
from app.redis_client import connect as connect_redis
from app.settings import Settings, get_settings
from app.users.models import Role, User

DEFAULT_API_URL = "http://127.0.0.1:8000"
T = TypeVar("T")

cli = typer.Typer(
    name="vocalborn",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
users_cli = typer.Typer(help="manage users", no_args_is_help=True)
cli.add_typer(users_cli, name="users")


# -- development commands (they talk to the database directly) --------------------------
async def create_user(settings: Settings, email: str, role: Role) -> User:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            user = User(email=email.lower(), role=role.value)
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                existing = await session.scalar(select(User).where(User.email == email.lower()))
                if existing is None:
                    raise
                existing.role = role.value
                await session.commit()
                return existing
            return user
    finally:
        await engine.dispose()


async def token_for(settings: Settings, email: str, ttl: int) -> str:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            user = await session.scalar(select(User).where(User.email == email.lower()))
    finally:
        await engine.dispose()
    if user is None:
        raise LookupError(f"no user with email {email}; create it with `vocalborn users create`")
    return issue_access_token(settings, user.user_id, Role(user.role), ttl)


@users_cli.command("create")
def users_create(email: str, admin: Annotated[bool, typer.Option("--admin")] = False) -> None:
    """Create a user (or change its role)."""
    role = Role.ADMIN if admin else Role.USER
    user = asyncio.run(create_user(get_settings(), email, role))
    print(f"{user.user_id} {user.email} {user.role}")


@cli.command("token")
def token_command(
    email: str, ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 3600
) -> None:
    """Print an access token for a user (reads DATABASE_URL and JWT_SECRET)."""
    try:
        token = asyncio.run(token_for(get_settings(), email, ttl))
    except (LookupError, OSError, RuntimeError) as exc:  # no such user, no database, no key
        typer.echo(f"vocalborn token: {exc}", err=True)
        raise typer.Exit(2) from None
    print(token)


@cli.command("link")
def link_command(
    api_url: Annotated[
        str, typer.Option("--api-url", envvar="VOCALBORN_API_URL", help="the API's base URL")
    ] = DEFAULT_API_URL,
    token: Annotated[
        str, typer.Option("--token", envvar="VOCALBORN_TOKEN", help="a token of the user")
    ] = "",
    data_dir: Annotated[
        Path, typer.Option(help="where `vocalborn up` keeps its JWT secret (without JWT_SECRET)")
    ] = Path("var"),
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = LINK_TOKEN_TTL_SECONDS,
) -> None:
    """Print a new link to the web page: a short-lived token, in the URL fragment, for the
    user of --token (VOCALBORN_TOKEN)."""
    err = Console(stderr=True)
    settings = get_settings()
    secret_file = data_dir / "jwt_secret"
    if settings.jwt_signing_key is None and secret_file.exists():
        settings = settings.model_copy(update={"jwt_secret": secret_file.read_text().strip()})
    if not token or settings.jwt_signing_key is None:
        err.print("vocalborn: needs --token (VOCALBORN_TOKEN) and JWT_SECRET or --data-dir")
        raise typer.Exit(EXIT_USAGE)
    try:
        user = decode_access_token(token, settings)
    except Unauthorized as exc:
        err.print(f"vocalborn: {exc.message}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from exc
    print(web_link(api_url, issue_access_token(settings, user.user_id, user.role, ttl)))


@cli.command("migrate")
def migrate_command() -> None:
    """Apply database migrations (alembic upgrade head)."""
    migrate.upgrade(get_settings().database_url)


@cli.command("up")
def up_command(
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    data_dir: Annotated[str, typer.Option(help="where embedded servers keep their data")] = "var",
) -> None:
    """Run the whole system on this machine."""
    from app.launcher import run

    raise typer.Exit(run(port=port, data_dir=data_dir))


# -- operations: worker liveness (heartbeats in Redis) ---------------------------------------
EXIT_NO_HEARTBEAT = 1
EXIT_REDIS_UNAVAILABLE = 2


async def _with_redis(body: Callable[[Redis], Awaitable[T]]) -> T:
    """`body` with a client from the settings (REDIS_URL or Sentinel), closed after."""
    redis = connect_redis(RedisTarget.of(get_settings()), client_name="vocalborn-cli")
    try:
        return await body(redis)
    finally:
        await redis.aclose()


@cli.command("workers")
def workers_command(json_output: JsonFlag = False) -> None:
    """List the live workers: those whose heartbeat key in Redis has not expired."""
    from app import liveness

    try:
        beats = asyncio.run(_with_redis(liveness.live_workers))
    except (OSError, RedisError) as exc:
        typer.echo(f"vocalborn workers: cannot read Redis: {exc}", err=True)
        raise typer.Exit(EXIT_REDIS_UNAVAILABLE) from None
    if json_output:
        print(json.dumps([dataclasses.asdict(beat) for beat in beats]))
        return
    table = Table("worker", "host", "pid", "jobs", "version", "last beat")
    now = time.time()
    for beat in beats:
        age = f"{max(now - beat.at, 0):.1f} s ago"
        table.add_row(beat.worker, beat.host, str(beat.pid), str(beat.jobs_in_flight),
                      beat.version, age)  # fmt: skip
    Console().print(table)
    Console(stderr=True).print(f"{len(beats)} live worker(s)")


@cli.command("worker-check")
def worker_check_command(
    name: Annotated[
        str | None, typer.Argument(help="the worker's name (WORKER_NAME); default: this host's")
    ] = None,
) -> None:
    """Exit 0 when worker NAME (without NAME: a worker on this host) has a live heartbeat, 1
    when it has none, 2 when Redis cannot be read: the worker containers' health check."""
    from app import liveness

    try:
        alive, line = asyncio.run(_with_redis(lambda redis: liveness.check(redis, name)))
    except (OSError, RedisError) as exc:
        typer.echo(f"vocalborn worker-check: cannot read Redis: {exc}", err=True)
        raise typer.Exit(EXIT_REDIS_UNAVAILABLE) from None
    typer.echo(line, err=not alive)
    raise typer.Exit(0 if alive else EXIT_NO_HEARTBEAT)


# -- the API client ---------------------------------------------------------------------
ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="VOCALBORN_API_URL", help="the API's base URL")
]
Token = Annotated[
    str,
    typer.Option(
        "--token", envvar="VOCALBORN_TOKEN", help="bearer token (vocalborn up prints one)"
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="print the JSON documents, for scripts")]


def _client(api_url: str, token: str, body: Callable[[Api], Awaitable[int]]) -> None:
    """Run one client command and exit with its code: API 4xx are bad input (2), anything
    else that stops it is a failure (1), Ctrl-C is 130."""
    err = Console(stderr=True)
    if not token:
        err.print("vocalborn: no token: pass --token or set VOCALBORN_TOKEN")
        raise typer.Exit(EXIT_USAGE)

    async def main() -> int:
        async with Api(api_url, token) as api:
            return await body(api)

    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except ApiError as exc:
        err.print(f"vocalborn: {exc}", highlight=False)
        code = EXIT_USAGE if 400 <= exc.status < 500 else EXIT_FAILED
    raise typer.Exit(code)


@cli.command("analyze")
def analyze_command(
    files: Annotated[
        list[Path],
        typer.Argument(exists=True, dir_okay=False, readable=True, help="recordings"),
    ],
    session: Annotated[
        uuid.UUID | None,
        typer.Option("--session", help="practice session id (new unless given)"),
    ] = None,
    language: Annotated[
        Literal["zh-TW", "en"], typer.Option("--language", help="language of the speech")
    ] = "zh-TW",
    target_text: Annotated[
        str | None, typer.Option("--target-text", help="the sentence that was read")
    ] = None,
    json_output: JsonFlag = False,
    cancel_on_interrupt: Annotated[
        bool, typer.Option("--cancel-on-interrupt", help="Ctrl-C cancels without asking")
    ] = False,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="analyse again, even a recording already analysed with these parameters",
        ),
    ] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = "",
) -> None:
    """Upload recordings into one practice session, analyse them and follow the progress."""
    from app.client.analyze import analyze

    parameters: dict[str, object] = {"language": language}
    if target_text is not None:
        parameters["target_text"] = target_text
    session_id = str(session) if session else None
    options = Options(files, session_id, parameters, json_output, cancel_on_interrupt, fresh)
    out, err = Console(), Console(stderr=True)
    _client(api_url, token, lambda api: analyze(api, options, out, err))


@cli.command("status")
def status_command(
    task_id: uuid.UUID,
    json_output: JsonFlag = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = "",
) -> None:
    """Show a task's status."""
    from app.client.render import status_view

    async def body(api: Api) -> int:
        doc = await api.status(str(task_id))
        if json_output:
            print(json.dumps(doc, ensure_ascii=False))
        else:
            Console().print(status_view(doc), highlight=False)
        return EXIT_FAILED if doc["status"] in ("failure", "cancelled") else EXIT_OK

    _client(api_url, token, body)


@cli.command("result")
def result_command(
    task_id: uuid.UUID,
    json_output: JsonFlag = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    token: Token = "",
) -> None:
    """Show a task's result (exit 1 when there is none: not finished, failed or cancelled)."""
    from app.client.render import result_view

    async def body(api: Api) -> int:
        try:
            doc = await api.result(str(task_id))
        except ApiError as exc:
            if exc.code != "result_not_ready":
                raise
            Console(stderr=True).print(f"vocalborn: {exc.message}", highlight=False)
            return EXIT_FAILED
        if json_output:
            print(json.dumps(doc, ensure_ascii=False))
        else:
            Console().print(result_view(str(task_id), doc), highlight=False)
        return EXIT_OK

    _client(api_url, token, body)


@cli.command("cancel")
def cancel_command(
    task_id: uuid.UUID, api_url: ApiUrl = DEFAULT_API_URL, token: Token = ""
) -> None:
    """Cancel a task (pending or retrying at once, processing through the worker)."""
    from app.client.render import status_view

    async def body(api: Api) -> int:
        Console().print(status_view(await api.cancel(str(task_id))), highlight=False)
        return EXIT_OK

    _client(api_url, token, body)


def main(argv: Sequence[str] | None = None) -> int:
    """The `vocalborn` entry point; returns the exit code (2 for bad usage)."""
    try:
        cli(args=list(argv) if argv is not None else None, prog_name="vocalborn")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
