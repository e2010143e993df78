"""The http probe against real local aiohttp targets that verify signatures with the reference libraries."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from gidgethub import ValidationFailure
from gidgethub.sansio import validate_event
from slack_sdk.signature import SignatureVerifier

from tests.probes.helpers import make_ctx, serve
from tracecanary.errors import ProbeError
from tracecanary.probes.http import HttpProbe
from tracecanary.probes.signing import github_signature, hmac_hex

SECRET = "It's a Secret to Everybody"


def test_github_signature_reference_vector() -> None:
    assert github_signature(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({
        "method": request.method, "path": request.path, "query": dict(request.query),
        "headers": dict(request.headers), "body": body.decode(),
    })


async def _github(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        validate_event(body, signature=request.headers["X-Hub-Signature-256"], secret=SECRET)
    except (ValidationFailure, KeyError) as e:
        return web.json_response({"error": str(e)}, status=401)
    return web.json_response({"ok": True, "signal_id": "s-1", "received": json.loads(body)})


async def _slack(request: web.Request) -> web.Response:
    body = await request.read()
    ok = SignatureVerifier(SECRET).is_valid(
        body, request.headers.get("X-Slack-Request-Timestamp", ""), request.headers.get("X-Slack-Signature", "")
    )
    return web.json_response({"ok": ok}, status=200 if ok else 401)


async def _hmac(request: web.Request) -> web.Response:
    body = await request.read()
    ok = request.headers.get("X-Signature") == "sha512=" + hmac_hex(SECRET, body, "sha512")
    return web.json_response({"ok": ok}, status=200 if ok else 401)


async def _form(request: web.Request) -> web.Response:
    form = await request.post()
    return web.json_response({"form": {k: str(v) for k, v in form.items()}})


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/echo")


def _app(gate: anyio.Event) -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/echo", _echo)
    app.router.add_post("/github", _github)
    app.router.add_post("/slack", _slack)
    app.router.add_post("/hmac", _hmac)
    app.router.add_post("/form", _form)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    gate = anyio.Event()
    async with serve(_app(gate)) as url, aiohttp.ClientSession() as session:
        yield url, session
        gate.set()


def _probe(**request: Any) -> HttpProbe:
    return HttpProbe.model_validate({"id": "p", "request": request})


@pytest.mark.anyio
async def test_github_signed_delivery_verified_by_gidgethub(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    ctx = make_ctx(session)
    probe = _probe(method="post", url=url + "/github", json={"test_id": "{{ run_id }}", "n": 1},
                   sign={"scheme": "github", "secret": SECRET})
    result = await probe.fire(ctx)
    assert result.response is not None
    assert result.response.status == 200, result.response.body_text
    assert result.response.json["received"] == {"test_id": ctx.run_id, "n": 1}


@pytest.mark.anyio
async def test_bad_github_secret_is_rejected_by_target(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    probe = _probe(method="POST", url=url + "/github", json={"a": 1}, sign={"scheme": "github", "secret": "wrong"})
    result = await probe.fire(make_ctx(session))
    assert result.response is not None and result.response.status == 401


@pytest.mark.anyio
async def test_slack_signature_verified_by_slack_sdk(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    probe = _probe(method="POST", url=url + "/slack", body="token=x&text={{ run_id }}",
                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                   sign={"scheme": "slack", "secret": SECRET})
    result = await probe.fire(make_ctx(session))
    assert result.response is not None and result.response.json == {"ok": True}


@pytest.mark.anyio
async def test_generic_hmac_signature(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    probe = _probe(method="POST", url=url + "/hmac", json={"x": "{{ probe_id }}"},
                   sign={"scheme": "hmac", "secret": SECRET, "header": "X-Signature",
                         "algorithm": "sha512", "prefix": "sha512="})
    result = await probe.fire(make_ctx(session))
    assert result.response is not None and result.response.status == 200


@pytest.mark.anyio
async def test_request_carries_trace_context_query_and_auth(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    ctx = make_ctx(session)
    probe = _probe(url=url + "/echo", query={"run": "{{ run_id }}"}, headers={"X-Probe": "{{ probe_id }}"},
                   auth={"bearer": "tok-{{ attempt }}"})
    result = await probe.fire(ctx)
    assert result.response is not None
    echoed = result.response.json
    assert echoed["query"] == {"run": ctx.run_id}
    assert echoed["headers"]["X-Probe"] == ctx.probe_id
    assert echoed["headers"]["Authorization"] == "Bearer tok-1"
    assert echoed["headers"]["traceparent"].startswith(f"00-{ctx.trace.trace_id}-")
    assert echoed["headers"]["tracestate"] == f"tracecanary={ctx.run_id}"
    assert f"tracecanary.run_id={ctx.run_id}" in echoed["headers"]["baggage"]
    assert echoed["headers"]["sentry-trace"].startswith(ctx.trace.trace_id)


@pytest.mark.anyio
async def test_basic_auth_and_form_body(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    probe = _probe(method="POST", url=url + "/echo", form={"a": "1", "b": "{{ probe_id }}"},
                   auth={"basic": {"username": "u", "password": "p w"}})
    result = await probe.fire(make_ctx(session))
    assert result.response is not None
    auth = aiohttp.BasicAuth.decode(result.response.json["headers"]["Authorization"])
    assert (auth.login, auth.password) == ("u", "p w")
    assert result.response.json["body"] == "a=1&b=probe-under-test"
    form = await _probe(method="POST", url=url + "/form", form={"k": "v v"}).fire(make_ctx(session))
    assert form.response is not None and form.response.json == {"form": {"k": "v v"}}


@pytest.mark.anyio
async def test_redirects_followed_or_not(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    followed = await _probe(url=url + "/redirect").fire(make_ctx(session))
    assert followed.response is not None and followed.response.status == 200
    assert followed.response.url.endswith("/echo")
    kept = await _probe(url=url + "/redirect", follow_redirects=False).fire(make_ctx(session))
    assert kept.response is not None and kept.response.status == 302


@pytest.mark.anyio
async def test_request_timeout_is_a_probe_error(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    with anyio.fail_after(5):
        with pytest.raises(ProbeError, match=r"no response within 0\.2s"):
            await _probe(url=url + "/slow", timeout="200ms").fire(make_ctx(session))


@pytest.mark.anyio
async def test_connection_refused_is_a_probe_error() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProbeError, match="ClientConnectorError"):
            await _probe(url="http://127.0.0.1:1/x").fire(make_ctx(session))


@pytest.mark.anyio
async def test_template_sandbox_escape_refused(target: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = target
    with pytest.raises(ProbeError, match=r"unsafe|__class__"):
        await _probe(url=url + "/echo", query={"x": "{{ ''.__class__.__mro__ }}"}).fire(make_ctx(session))
    with pytest.raises(ProbeError, match="undefined"):
        await _probe(url=url + "/echo", query={"x": "{{ nope.x }}"}).fire(make_ctx(session))


def _self_signed(tmp: Path) -> ssl.SSLContext:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.anyio
async def test_tls_verify_toggle(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/echo", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path))
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ProbeError, match=r"(?i)certificate"):
                await _probe(url=f"https://127.0.0.1:{port}/echo").fire(make_ctx(session))
            ok = await _probe(url=f"https://127.0.0.1:{port}/echo", verify_tls=False).fire(make_ctx(session))
            assert ok.response is not None and ok.response.status == 200
    finally:
        await runner.cleanup()


def test_config_errors_are_exact() -> None:
    with pytest.raises(ValueError, match="at most one of json, body, form; got json, body"):
        _probe(url="http://x", json={}, body="x")
    with pytest.raises(ValueError, match=r"sign\.header is required for scheme hmac"):
        _probe(url="http://x", sign={"scheme": "hmac", "secret": "s"})
    with pytest.raises(ValueError, match="auth takes exactly one of bearer, basic"):
        _probe(url="http://x", auth={})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        _probe(url="http://x", bogus=1)
