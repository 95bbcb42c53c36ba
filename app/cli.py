"""`vocalborn`: development, demo and test commands (the real platform issues its own tokens)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import migrate
from app.auth import issue_access_token
from app.db import create_engine, create_sessionmaker
from app.settings import Settings, get_settings
from app.users.models import Role, User


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
        raise SystemExit(f"no user with email {email}; create it with `vocalborn users create`")
    return issue_access_token(settings, user.user_id, Role(user.role), ttl)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vocalborn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True
    )
    create = users.add_parser("create", help="create a user (or change its role)")
    create.add_argument("email")
    create.add_argument("--admin", action="store_true")

    token = commands.add_parser("token", help="print an access token for a user")
    token.add_argument("email")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")

    commands.add_parser("migrate", help="apply database migrations (alembic upgrade head)")

    up = commands.add_parser("up", help="run the whole system on this machine")
    up.add_argument("--port", type=int, default=8000, help="API port")
    up.add_argument("--data-dir", default="var", help="where embedded servers keep their data")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "up":
        from app.launcher import run

        return int(run(port=args.port, data_dir=args.data_dir))
    settings = get_settings()
    if args.command == "migrate":
        migrate.upgrade(settings.database_url)
    elif args.command == "users":
        role = Role.ADMIN if args.admin else Role.USER
        user = asyncio.run(create_user(settings, args.email, role))
        print(f"{user.user_id} {user.email} {user.role}")
    elif args.command == "token":
        print(asyncio.run(token_for(settings, args.email, args.ttl)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
