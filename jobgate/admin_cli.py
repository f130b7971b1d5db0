"""`jobgate keys ...` and `jobgate tenants ...`: the operator's commands, on the database itself.

They call the same `core.auth` and `core.tenancy` functions as the operator API
(`/v1/admin/...`), so a key or tenant made either way is the same. A refused command (an
unknown tenant, a name taken, a bad value) prints one line saying what to fix and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.orm import Session


@contextmanager
def _session() -> Iterator[Session]:
    from core.settings import Settings
    from core.store.db import make_sync_engine, make_sync_sessions

    engine = make_sync_engine(Settings())
    try:
        with make_sync_sessions(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _refused(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        from core.errors import ApiError

        try:
            return run(args)
        except ApiError as exc:
            print(f"jobgate: {exc.message}", file=sys.stderr)
            return 1

    return wrapped


def _print_rows(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]], *, as_json: bool) -> None:
    """The rows as JSON for scripts, or a table of these (field, heading, width) columns."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(" ".join(f"{heading:<{width}}" for _, heading, width in columns).rstrip())
    for row in rows:
        cells = (f"{row[field] if row[field] is not None else '-'!s:<{width}}" for field, _, width in columns)
        print(" ".join(cells).rstrip())


def _money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"an amount in USD is 0 or more: {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


# --- keys -------------------------------------------------------------------------------------


@_refused
def _keys_create(args: argparse.Namespace) -> int:
    from core.auth import KeyOptions, Scope, create_key
    from core.config import load_config
    from core.errors import InvalidRequest
    from core.settings import Settings

    if args.operator == bool(args.tenant):
        raise InvalidRequest("give either --tenant NAME (a tenant key) or --operator (an operator key)")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if models:
        config = load_config(Settings().config_path())
        unknown = [m for m in models if config.targets_for(m) is None]
        if unknown:
            raise InvalidRequest(
                f"unknown model(s) {', '.join(unknown)}; known: {', '.join(config.known_models())}"
            )
    options = KeyOptions(
        name=args.name,
        expires_in_days=args.expires_in_days,
        models=models,
        allow_interactive=args.allow_interactive,
        budget_usd_day=args.budget_usd_day,
        budget_usd_month=args.budget_usd_month,
    )
    scope: Scope = "operator" if args.operator else "tenant"
    with _session() as session:
        new = create_key(session, args.tenant, scope=scope, options=options)
    owner = f"tenant {args.tenant!r} ({new.tenant_id})" if args.tenant else "the operator"
    print(f"Created {scope} key {new.key_id} for {owner}. Store it now; it is shown once.")
    print(new.key)
    return 0


@_refused
def _keys_list(args: argparse.Namespace) -> int:
    from core.auth import list_keys
    from core.representation import key_object

    with _session() as session:
        keys = [key_object(key, tenant) for key, tenant in list_keys(session, args.tenant)]
    columns = [("id", "ID", 30), ("prefix", "PREFIX", 11), ("scope", "SCOPE", 9), ("tenant", "TENANT", 20)]
    columns += [("name", "NAME", 20), ("expires_at", "EXPIRES", 25), ("revoked_at", "REVOKED", 0)]
    _print_rows(keys, columns, as_json=args.json)
    return 0


@_refused
def _keys_revoke(args: argparse.Namespace) -> int:
    from core.auth import revoke_key

    with _session() as session:
        key, _ = revoke_key(session, args.key)
        print(f"Revoked key {key.id} ({key.prefix}…); it is refused everywhere within seconds.")
    return 0


# --- tenants ----------------------------------------------------------------------------------


def _tenant_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = ("rpm", "tpm", "budget_usd_day", "budget_usd_month", "share", "retention_days", "shared_cache")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _print_tenant(tenant: dict[str, Any]) -> None:
    print(json.dumps(tenant, indent=2))


@_refused
def _tenants_create(args: argparse.Namespace) -> int:
    from core.representation import tenant_object
    from core.tenancy import create_tenant

    with _session() as session:
        _print_tenant(tenant_object(create_tenant(session, args.name, _tenant_fields(args))))
    return 0


@_refused
def _tenants_update(args: argparse.Namespace) -> int:
    from core.representation import tenant_object
    from core.tenancy import update_tenant

    with _session() as session:
        _print_tenant(tenant_object(update_tenant(session, args.name, _tenant_fields(args))))
    return 0


@_refused
def _tenants_list(args: argparse.Namespace) -> int:
    from core.representation import tenant_object
    from core.tenancy import list_tenants

    with _session() as session:
        tenants = [tenant_object(t) for t in list_tenants(session)]
    columns = [("name", "NAME", 24), ("rpm", "RPM", 8), ("tpm", "TPM", 10), ("budget_usd_day", "USD/DAY", 10)]
    columns += [("budget_usd_month", "USD/MONTH", 10), ("share", "SHARE", 0)]
    _print_rows(tenants, columns, as_json=args.json)
    return 0


def _policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=_positive_int, help="requests per minute, across providers")
    parser.add_argument("--tpm", type=_positive_int, help="tokens per minute, across providers")
    parser.add_argument("--budget-usd-day", type=_money, help="spend cap per UTC day")
    parser.add_argument("--budget-usd-month", type=_money, help="spend cap per UTC month")
    parser.add_argument("--share", type=float, help="weight in fair shares of a provider (default 1)")
    parser.add_argument(
        "--retention-days", type=_positive_int, help="delete finished work after this many days"
    )
    parser.add_argument(
        "--shared-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the cross-tenant cache",
    )


def add_admin_commands(sub: Any) -> None:
    """Register `keys` and `tenants` on the top-level subparsers."""
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (and its tenant if needed)")
    create.add_argument("--tenant", help="the tenant the key works for")
    create.add_argument("--operator", action="store_true", help="an operator key (/v1/admin, /v1/providers)")
    create.add_argument("--name", help="a name to tell the key apart")
    create.add_argument("--expires-in-days", type=float, help="the key stops working after this many days")
    create.add_argument("--models", help="comma-separated model names the key may use (default: all)")
    create.add_argument(
        "--allow-interactive",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="its batches may ask for priority 'interactive' (default: no)",
    )
    create.add_argument("--budget-usd-day", type=_money, help="this key's spend cap per UTC day")
    create.add_argument("--budget-usd-month", type=_money, help="this key's spend cap per UTC month")
    create.set_defaults(func=_keys_create)
    listing = keys_sub.add_parser("list", help="list keys (prefixes only, never secrets)")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id or prefix")
    revoke.add_argument("key", metavar="KEY_ID_OR_PREFIX")
    revoke.set_defaults(func=_keys_revoke)

    tenants = sub.add_parser("tenants", help="manage tenants: limits, budgets, shares")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    for name, func, text in (
        ("create", _tenants_create, "create a tenant"),
        ("update", _tenants_update, "change a tenant's policy (reaches the fleet within seconds)"),
    ):
        command = tenants_sub.add_parser(name, help=text)
        command.add_argument("name", metavar="NAME")
        _policy_options(command)
        command.set_defaults(func=func)
    tenants_list = tenants_sub.add_parser("list", help="list tenants")
    tenants_list.add_argument("--json", action="store_true")
    tenants_list.set_defaults(func=_tenants_list)
