"""The Sentry emulator at the HTTP level: ingestion auth and encodings, API shapes, check-ins, faults."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import aiohttp
import anyio
import pytest
from sentry_sdk.envelope import Envelope, Item, PayloadRef

from tracecanary.demo.emulators.sentry import SentryEmulator

pytestmark = pytest.mark.anyio

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
T0 = 1_800_000_000.0


def envelope(*items: tuple[str, dict[str, Any]]) -> bytes:
    env = Envelope(headers={"sent_at": "2027-01-15T08:00:00Z"})
    for kind, payload in items:
        env.add_item(Item(payload=PayloadRef(json=payload), type=kind))
    return env.serialize()


def transaction(name: str, span_id: str, parent: str | None, children: list[dict[str, Any]], status: str = "ok") -> dict[str, Any]:
    return {
        "type": "transaction", "event_id": span_id * 2, "transaction": name,
        "start_timestamp": T0, "timestamp": T0 + 0.5, "sdk": {"name": "sentry.python"},
        "contexts": {"trace": {"trace_id": TID, "span_id": span_id, "parent_span_id": parent, "op": "http.server",
                               "status": status}},
        "spans": children,
    }


def child(span_id: str, parent: str, op: str, description: str, status: str | None = None) -> dict[str, Any]:
    return {"trace_id": TID, "span_id": span_id, "parent_span_id": parent, "op": op, "description": description,
            "start_timestamp": "2027-01-15T08:00:00.100000Z", "timestamp": "2027-01-15T08:00:00.300000Z",
            "status": status}


def error(span_id: str, message: str) -> dict[str, Any]:
    return {"event_id": span_id * 2, "level": "error", "timestamp": T0 + 0.2,
            "exception": {"values": [{"type": "KeyError", "value": message}]},
            "contexts": {"trace": {"trace_id": TID, "span_id": span_id}}}


async def post_envelope(session: aiohttp.ClientSession, emu: SentryEmulator, body: bytes, **kw: Any) -> int:
    with anyio.fail_after(5):
        async with session.post(f"{emu.base_url}/api/1/envelope/", data=body, **kw) as resp:
            return resp.status


async def api(session: aiohttp.ClientSession, emu: SentryEmulator, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token or emu.token}"} if token != "" else {}
    with anyio.fail_after(5):
        async with session.get(f"{emu.base_url}/api/0{path}", headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if resp.content_type == "application/json" else text


def auth(emu: SentryEmulator) -> dict[str, str]:
    return {"X-Sentry-Auth": f"Sentry sentry_key={emu.public_key}, sentry_version=7, sentry_client=test/1.0",
            "Content-Type": "application/x-sentry-envelope"}


async def test_ingest_auth_gzip_and_trace_shapes(sentry_emulator: SentryEmulator) -> None:
    emu = sentry_emulator
    root = transaction("POST /orders", "a" * 16, "f" * 16, [child("b" * 16, "a" * 16, "db.query", "SELECT 1", "ok")])
    downstream = transaction("orders process", "c" * 16, "b" * 16, [], status="internal_error")
    body = envelope(("transaction", root), ("transaction", downstream), ("event", error("c" * 16, "'sku'")),
                    ("event", error("9" * 16, "'lost'")))
    async with aiohttp.ClientSession() as session:
        assert await post_envelope(session, emu, body) == 401
        assert await post_envelope(session, emu, body, params={"sentry_key": "nope"}) == 401
        gz = {**auth(emu), "Content-Encoding": "gzip"}
        assert await post_envelope(session, emu, gzip.compress(body), headers=gz) == 200
        assert (len(emu.store.transactions), len(emu.store.errors)) == (2, 2)

        assert (await api(session, emu, f"/organizations/acme/trace/{TID}/", token=""))[0] == 401
        assert (await api(session, emu, f"/organizations/other/trace/{TID}/"))[0] == 404
        status, tree = await api(session, emu, f"/organizations/acme/trace/{TID}/?additional_attributes=span.status")
    assert status == 200
    top_span, lost = tree
    assert set(top_span) >= {"event_id", "parent_span_id", "op", "description", "start_timestamp", "end_timestamp",
                             "duration", "project_slug", "is_transaction", "children", "errors", "transaction_id"}
    assert (top_span["event_id"], top_span["parent_span_id"], top_span["is_transaction"]) == ("a" * 16, "f" * 16, True)
    assert top_span["duration"] == 500.0 and top_span["project_slug"] == "shop"
    (db,) = top_span["children"]
    assert (db["description"], db["is_transaction"], db["additional_attributes"]) == ("SELECT 1", False, {"span.status": "ok"})
    (process,) = db["children"]
    # Sentry's trace view describes an error by its search message (value, type, …), not "Type: value".
    assert process["description"] == "orders process" and process["errors"][0]["description"] == "'sku' KeyError"
    assert (lost["event_type"], lost["description"]) == ("error", "'lost' KeyError")


async def test_legacy_view_and_event_details(sentry_emulator: SentryEmulator) -> None:
    emu = sentry_emulator
    root = transaction("POST /orders", "a" * 16, None, [child("b" * 16, "a" * 16, "db.query", "SELECT 1")])
    downstream = transaction("orders process", "c" * 16, "b" * 16, [])
    body = envelope(("transaction", root), ("transaction", downstream), ("event", error("b" * 16, "'x'")),
                    ("event", error("9" * 16, "'lost'")))
    async with aiohttp.ClientSession() as session:
        assert await post_envelope(session, emu, body, headers=auth(emu)) == 200
        status, legacy = await api(session, emu, f"/organizations/acme/events-trace/{TID}/")
        assert status == 200
        (top,) = legacy["transactions"]
        assert (top["span_id"], top["transaction.duration"], top["generation"]) == ("a" * 16, 500, 0)
        assert top["errors"][0]["span"] == "b" * 16 and top["errors"][0]["title"] == "KeyError: 'x'"
        assert top["errors"][0]["message"] == "'x' KeyError"
        (sub,) = top["children"]
        assert (sub["parent_event_id"], sub["generation"]) == (top["event_id"], 1)
        assert [e["title"] for e in legacy["orphan_errors"]] == ["KeyError: 'lost'"]
        status, details = await api(session, emu, f"/projects/acme/shop/events/{top['event_id']}/")
        assert status == 200 and details["entries"][0]["type"] == "spans"
        assert details["entries"][0]["data"][0]["span_id"] == "b" * 16
        emu.legacy_only = True
        assert (await api(session, emu, f"/organizations/acme/trace/{TID}/"))[0] == 404
        assert (await api(session, emu, f"/organizations/acme/events-trace/{'0' * 31}1/"))[0] == 404


async def test_http_check_ins_upsert_and_update(sentry_emulator: SentryEmulator) -> None:
    emu = sentry_emulator
    cron = f"{emu.base_url}/api/1/cron/nightly/{emu.public_key}/"
    async with aiohttp.ClientSession() as session:
        with anyio.fail_after(5):
            async with session.get(cron, params={"status": "in_progress"}) as resp:
                assert resp.status == 202
                check_in_id = (await resp.json())["id"]
            config = {"schedule": {"type": "crontab", "value": "0 3 * * *"}, "max_runtime": 5}
            async with session.post(cron, json={"status": "error", "check_in_id": check_in_id, "duration": 1500,
                                                "monitor_config": config}) as resp:
                assert resp.status == 202
            async with session.get(f"{emu.base_url}/api/1/cron/nightly/wrong-key/", params={"status": "ok"}) as resp:
                assert resp.status == 401
        status, rows = await api(session, emu, "/organizations/acme/monitors/nightly/checkins/")
    assert status == 200
    assert rows == [{"id": check_in_id, "status": "error", "duration": 1500, "environment": None,
                     "monitorConfig": config}]
    assert emu.store.check_ins[0].source == "http"


async def test_throttle_and_ingest_delay(sentry_emulator: SentryEmulator) -> None:
    emu = sentry_emulator
    emu.ingest_delay_s = 0.3
    emu.throttle(1, retry_after_s=7)
    path = f"/organizations/acme/events/?dataset=errors&query=trace:{TID}&field=id&field=level"
    async with aiohttp.ClientSession() as session:
        assert await post_envelope(session, emu, envelope(("event", error("d" * 16, "'k'"))), headers=auth(emu)) == 200
        t0 = time.monotonic()
        with anyio.fail_after(5):
            async with session.get(emu.base_url + "/api/0" + path, headers={"Authorization": f"Bearer {emu.token}"}) as r:
                assert (r.status, r.headers["Retry-After"]) == (429, "7")
        rows: list[Any] = []
        with anyio.fail_after(5):
            while not rows:
                status, body = await api(session, emu, path)
                assert status == 200
                rows = body["data"]
                await anyio.sleep(0.02)
    assert time.monotonic() - t0 >= 0.25
    assert rows == [{"id": "d" * 32, "level": "error"}]


async def test_error_fields_are_derived_as_sentry_derives_them() -> None:
    """metadata/title/culprit/search message per getsentry/sentry src/sentry/eventtypes/error.py,
    src/sentry/event_manager.py get_culprit and src/sentry/services/eventstore/models.py search_message."""
    frames = [{"function": "main", "module": "app", "filename": "app.py", "in_app": True},
              {"function": "charge", "module": "billing", "filename": "billing.py", "in_app": True},
              {"function": "request", "module": "httpx", "filename": "httpx/_client.py", "in_app": False}]
    err = {"event_id": "e" * 32, "level": "error", "timestamp": T0 + 0.2, "platform": "python",
           "transaction": "/checkout",
           "exception": {"values": [{"type": "ValueError", "value": "payment declined\nsecond line",
                                     "stacktrace": {"frames": frames}}]},
           "contexts": {"trace": {"trace_id": TID, "span_id": "b" * 16}}}
    bare = {**err, "event_id": "f" * 32, "transaction": None}
    async with SentryEmulator(projects={"1": "shop"}, timestamps="iso") as emu, aiohttp.ClientSession() as session:
        body = envelope(("transaction", transaction("/checkout", "a" * 16, None, [child("b" * 16, "a" * 16, "db", "q")])),
                        ("event", err), ("event", bare))
        assert await post_envelope(session, emu, body, headers=auth(emu)) == 200
        status, details = await api(session, emu, f"/projects/acme/shop/events/{'e' * 32}/")
        assert status == 200
        assert details["metadata"] == {"value": "payment declined\nsecond line", "type": "ValueError",
                                       "filename": "billing.py", "function": "charge",
                                       "display_title_with_tree_label": False}
        assert (details["title"], details["culprit"], details["message"]) == (
            "ValueError: payment declined", "/checkout", "")
        assert details["entries"][0]["data"]["values"][0]["type"] == "ValueError"
        status, rows = await api(session, emu, f"/organizations/acme/events/?dataset=errors&query=trace:{TID}"
                                               "&field=id&field=title&field=message&field=culprit&field=error.type")
        by_id = {r["id"]: r for r in rows["data"]}
        assert by_id["e" * 32]["message"] == "payment declined\nsecond line ValueError billing.py charge /checkout"
        assert by_id["e" * 32]["error.type"] == ["ValueError"]
        # Without a transaction the culprit is "module in function" of the crash frame.
        assert by_id["f" * 32]["culprit"] == "billing in charge"
        status, tree = await api(session, emu, f"/organizations/acme/trace/{TID}/")
    (root,) = tree
    assert (root["start_timestamp"], root["end_timestamp"]) == ("2027-01-15T08:00:00.000000Z", "2027-01-15T08:00:00.500000Z")
    (db,) = root["children"]
    issue = next(e for e in db["errors"] if e["event_id"] == "e" * 32)
    assert issue["description"] == by_id["e" * 32]["message"] and issue["culprit"] == "/checkout"
    assert isinstance(issue["start_timestamp"], float) and issue["short_id"] == "SHOP-1"
