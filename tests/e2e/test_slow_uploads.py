"""Slow uploads against a real API process (uvicorn, its default SQL pool, Postgres).

Issue 14 found that about 30 uploads trickling one byte a second made every other request
503: each held a pool connection from its key check until its body had come. Here 40 tenants
each start an upload over a raw socket and trickle one byte a second, while another tenant's
`GET /v1/jobs` must answer 200 within 2 s all along; then a trickle is cut off with a 408 and
a closed connection once `JOBGATE_BODY_READ_TIMEOUT_S` and the minimum rate are spent.
Everything runs on 127.0.0.1 and ends by itself (a fixed number of one-second rounds).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from core.auth import create_key
from core.settings import Settings
from core.store.db import make_sync_engine, make_sync_sessions
from tests.fleet import Fleet, run_fleet, sim_provider
from tests.sim_process import SimHandle, run_sim

pytestmark = pytest.mark.e2e

UPLOADS = 40
TRICKLE_ROUNDS = 8
ANSWER_WITHIN_S = 2.0
# The pool an API process runs with unless told otherwise (the fleet's own default is other).
DEFAULT_POOL = {
    "db_pool_size": str(Settings.model_fields["db_pool_size"].default),
    "db_max_overflow": str(Settings.model_fields["db_max_overflow"].default),
}


@pytest.fixture
def own_sim(redis_url: str, postgres_admin_url: str) -> Iterator[SimHandle]:
    with run_sim() as sim:
        yield sim


def config(sim: SimHandle) -> dict[str, Any]:
    return {
        "providers": {"sim": sim_provider(sim)},
        "models": {"fast": {"targets": [{"provider": "sim", "model": "uploads"}]}},
    }


def tenant_keys(fleet: Fleet, count: int) -> list[str]:
    """One key for each of `count` new tenants: none is in the API's key cache yet."""
    engine = make_sync_engine(Settings(database_url=fleet.database_url))
    try:
        with make_sync_sessions(engine)() as session:
            return [create_key(session, f"uploader-{n}").key for n in range(count)]
    finally:
        engine.dispose()


def start_upload(stack: ExitStack, api_url: str, key: str) -> socket.socket:
    """A JSON batch upload of a declared 1 MB, of which only the first bytes are sent."""
    url = urlsplit(api_url)
    assert url.hostname is not None and url.port is not None
    sock = stack.enter_context(socket.create_connection((url.hostname, url.port), timeout=5))
    head = (
        f"POST /v1/batches HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"requests": [')
    return sock


def answered(sockets: list[socket.socket]) -> list[socket.socket]:
    """The sockets the server has written to (or closed) so far."""
    readable, _, _ = select.select(sockets, [], [], 0)
    return readable


def test_forty_trickling_uploads_leave_another_tenants_requests_answered_within_2_s(
    own_sim: SimHandle,
) -> None:
    with run_fleet(sim=own_sim, config=config(own_sim), workers=0, api_settings=DEFAULT_POOL) as fleet:
        keys = tenant_keys(fleet, UPLOADS)
        auth = {"Authorization": f"Bearer {fleet.api_key}"}
        with ExitStack() as stack, httpx.Client(base_url=fleet.api_url, timeout=30, headers=auth) as other:
            assert other.get("/v1/jobs").status_code == 200  # the other tenant, before the flood
            uploads = [start_upload(stack, fleet.api_url, key) for key in keys]
            slowest_s = 0.0
            # Round 0 is the 40 uploads' key checks (each a new key, each its own lookup, the
            # pool growing to meet them); the flood is measured from the first trickled byte on.
            for round_number in range(TRICKLE_ROUNDS + 1):
                round_began = time.monotonic()
                for upload in uploads:
                    upload.sendall(b" ")
                listed = other.get("/v1/jobs")
                assert listed.status_code == 200, listed.text
                if round_number:
                    slowest_s = max(slowest_s, time.monotonic() - round_began)
                # One byte a second is the trickle itself, not a wait for a condition.
                time.sleep(max(0.0, 1.0 - (time.monotonic() - round_began)))
            still_uploading = len(uploads) - len(answered(uploads))

    assert slowest_s < ANSWER_WITHIN_S, (
        f"GET /v1/jobs took {slowest_s:.1f} s while {UPLOADS} uploads trickled"
    )
    assert still_uploading == UPLOADS  # none was refused: each really held its request open


def test_a_trickling_upload_is_cut_off_with_408_and_its_connection_closed(own_sim: SimHandle) -> None:
    timeout_s = 2
    settings = {"body_read_timeout_s": str(timeout_s)}
    with (
        run_fleet(sim=own_sim, config=config(own_sim), workers=0, api_settings=settings) as fleet,
        ExitStack() as stack,
    ):
        upload = start_upload(stack, fleet.api_url, fleet.api_key)
        began = time.monotonic()
        rounds = 0
        while not answered([upload]) and rounds < 15:
            upload.sendall(b" ")
            rounds += 1
            time.sleep(1)  # the trickle: one byte a second
        cut_after_s = time.monotonic() - began
        reply = b""
        while chunk := upload.recv(65536):  # until the server closes the connection
            reply += chunk

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    assert b"connection: close" in head.lower()
    assert b"request_timeout" in body
    assert timeout_s <= cut_after_s < 10  # cut off by the server, not by the end of the trickle
