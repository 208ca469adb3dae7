"""Command line: ``python -m api serve | migrate | users ... | keys ...``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from typing import Any

from api import db, keystore
from api.errors import MoragError
from api.ids import utcnow
from api.jobs import JobState, JobStore
from api.keystore import Scope
from api.notifier import Notifier
from api.settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m api", description="morag-remote server")
    sub = p.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default=None, help="default: MORAG_LOG_LEVEL (info)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on one port (PostgreSQL and a Qdrant server for more than 1)",
    )

    sub.add_parser("migrate", help="alembic upgrade head")

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    uc = users.add_parser("create", help="create a user")
    uc.add_argument("name")
    uc.add_argument(
        "--no-shared-fallback",
        action="store_true",
        help="never hand this user's jobs to shared (operator) workers",
    )
    users.add_parser("list", help="list users")
    us = users.add_parser("set", help="change a user's fallback settings")
    us.add_argument("name")
    us.add_argument("--shared-fallback", choices=["on", "off"])
    us.add_argument("--cpu-fallback", choices=["on", "off"])

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    kc = keys.add_parser("create", help="create a key (printed once, alone on the last line)")
    kc.add_argument("--user", required=True)
    kc.add_argument("--scope", required=True, choices=[s.value for s in Scope])
    keys.add_parser("list", help="list keys (never the keys themselves)")
    kr = keys.add_parser("revoke", help="revoke a key; takes effect on its next request")
    kr.add_argument("key_id")

    tasks = sub.add_parser("tasks", help="manage tasks").add_subparsers(dest="action", required=True)
    tp = tasks.add_parser("prune", help="delete every user's ended tasks older than N days")
    tp.add_argument("--older-than-days", type=float, required=True)
    tp.add_argument("--status", choices=["succeeded", "failed", "canceled", "dead"])
    return p


def _onoff(v: str | None) -> bool | None:
    return None if v is None else v == "on"


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    url = settings.resolved_database_url()
    await db.upgrade(url)
    if args.cmd == "migrate":
        print("database is at the latest schema")
        return
    engine = db.make_engine(url)
    try:
        if args.cmd == "users":
            await _users(engine, args)
        elif args.cmd == "tasks":
            cutoff = utcnow() - timedelta(days=args.older_than_days)
            store = JobStore(engine, settings, Notifier())  # prune neither wakes nor notifies
            status = JobState(args.status) if args.status else None
            deleted = await store.prune(None, True, cutoff, status)
            print(f"deleted {deleted} tasks")
        else:
            await _keys(engine, args)
    finally:
        await db.dispose(engine)


async def _users(engine: Any, args: argparse.Namespace) -> None:
    if args.action == "create":
        uid = await keystore.create_user(engine, args.name, shared_fallback=not args.no_shared_fallback)
        print(f"created user {args.name} (id {uid})")
    elif args.action == "list":
        for u in await keystore.list_users(engine):
            print(
                f"{u['id']}\t{u['name']}\tcpu_fallback={u['cpu_fallback']}\tshared_fallback={u['shared_fallback']}"
            )
    else:
        await keystore.set_user_fallback(
            engine, args.name, cpu=_onoff(args.cpu_fallback), shared=_onoff(args.shared_fallback)
        )
        print(f"updated user {args.name}")


async def _keys(engine: Any, args: argparse.Namespace) -> None:
    if args.action == "create":
        key_id, key = await keystore.create_key(engine, args.user, Scope(args.scope))
        print(f"created {args.scope} key {key_id} for {args.user}; store it now, it is not shown again:")
        print(key)
    elif args.action == "list":
        print("key_id\tuser\tscope\tprefix\tcreated\trevoked\tlast_used")
        for k in await keystore.list_keys(engine):
            print(
                "\t".join(
                    str(k[c] or "-")
                    for c in ("id", "user", "scope", "prefix", "created_at", "revoked_at", "last_used_at")
                )
            )
    else:
        await keystore.revoke_key(engine, args.key_id)
        print(f"revoked {args.key_id}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    if args.cmd == "serve":
        from api.serve import serve

        serve(settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
        return 0
    try:
        asyncio.run(_run(args, settings))
    except MoragError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
