"""`jobgate keys ...` and `jobgate tenants ...` on a real database (CONTRACT.md, "Roles and keys"):
the key alone on the last line, listings without secrets, revocation, policies set and listed."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from core.auth import key_is_valid
from core.settings import Settings
from core.store.db import make_sync_engine, make_sync_sessions
from jobgate.cli import main
from tests.conftest import sqlite_only

pytestmark = sqlite_only


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("JOBGATE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("JOBGATE_CONFIG", str(settings.config))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def valid(settings: Settings, key: str) -> bool:
    engine = make_sync_engine(settings)
    try:
        with make_sync_sessions(engine)() as session:
            return key_is_valid(session, key)
    finally:
        engine.dispose()


def test_keys_are_created_listed_without_secrets_and_revoked(cli: Cli, settings: Settings) -> None:
    code, out, _ = cli("keys", "create", "--tenant", "acme", "--name", "etl", "--models", "fast")
    tenant_key = out.strip().splitlines()[-1]
    _, out, _ = cli("keys", "create", "--operator", "--name", "ops")
    operator_key = out.strip().splitlines()[-1]

    code_list, listing, _ = cli("keys", "list", "--json")
    keys = {k["name"]: k for k in json.loads(listing)}
    revoked_code, _, _ = cli("keys", "revoke", keys["etl"]["prefix"])

    assert code == 0 and tenant_key.startswith("jg_") and operator_key.startswith("jg_")
    assert code_list == 0 and tenant_key not in listing and operator_key not in listing
    assert (keys["etl"]["scope"], keys["etl"]["tenant"], keys["etl"]["models"]) == (
        "tenant",
        "acme",
        ["fast"],
    )
    assert (keys["ops"]["scope"], keys["ops"]["tenant"]) == ("operator", None)
    assert revoked_code == 0 and not valid(settings, tenant_key) and valid(settings, operator_key)


def test_tenants_are_created_updated_and_listed_and_bad_input_is_one_line(cli: Cli) -> None:
    created, _, _ = cli("tenants", "create", "acme", "--rpm", "600", "--share", "2")
    updated, out, _ = cli("tenants", "update", "acme", "--budget-usd-day", "50")
    duplicate, _, duplicate_err = cli("tenants", "create", "acme")
    unknown, _, unknown_err = cli("tenants", "update", "nobody", "--rpm", "1")
    _, table, _ = cli("tenants", "list")

    assert (created, updated) == (0, 0)
    assert json.loads(out)["budget_usd_day"] == "50" and json.loads(out)["rpm"] == 600
    assert duplicate == 1 and "exists already" in duplicate_err and "Traceback" not in duplicate_err
    assert unknown == 1 and "No tenant named 'nobody'" in unknown_err
    assert "acme" in table and "600" in table and "50" in table
    assert table.splitlines()[0].split()[:3] == ["NAME", "RPM", "TPM"]
