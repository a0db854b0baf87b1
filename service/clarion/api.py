"""The HTTP API of a pod: publish, history, admin (shed), metrics, health, the demo page.

``POST /api/publish`` is a plain ASGI handler: the hot path of every publish
skips Starlette's request, routing and response objects
(docs/performance.md). The rest are ordinary Starlette endpoints.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from . import history_api
from .auth import api_key_ok, token_ok
from .broker import BrokerUnavailable
from .gateway import Gateway
from .message import Target
from .namespaces import Namespaces
from .protocol import ProtocolError, parse_publish_body, parse_target


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": code, "message": message}


async def _read_body(gw: Gateway, headers: Headers, receive: Receive) -> bytes | None:
    """The request body, or None when it is over ``--max-body-bytes``."""
    limit = gw.settings.max_body_bytes
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def publish(gw: Gateway, headers: Headers, receive: Receive) -> tuple[int, dict[str, Any]]:
    """The publish API, as (status, JSON body): 202 only after the broker's confirm."""
    s = gw.settings
    if not api_key_ok(headers, s.api_keys):
        return _error(401, "unauthorized", "missing or invalid API key (Authorization: Bearer)")
    try:
        body = await _read_body(gw, headers, receive)
    except ConnectionError:
        return _error(400, "bad_body", "client went away")
    if body is None:
        gw.metrics.limit_hits.labels(limit="body_size").inc()
        return _error(413, "too_large", f"body over {s.max_body_bytes} bytes")
    try:
        items, batch = parse_publish_body(body, headers.get("idempotency-key"))
    except ProtocolError as exc:
        return _error(400, exc.code, exc.message)
    try:
        ids = await gw.publish(items, source="api")
    except BrokerUnavailable as exc:
        return _error(503, "unavailable", f"broker unavailable: {exc}")
    return 202, ({"ids": ids} if batch else {"id": ids[0]})


async def publish_asgi(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /api/publish``."""
    status, payload = await publish(gw, Headers(scope=scope), receive)
    gw.metrics.publish_requests.labels(status=str(status)).inc()
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _presence_target(request: Request, allowed: tuple[str, ...]) -> Target:
    params = request.query_params
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ProtocolError("unknown_field", f"no parameter {unknown[0][:64]!r}")
    named = {k: params[k] for k in allowed if k in params}
    if len(named) != 1:
        raise ProtocolError("bad_target", f"exactly one of {' or '.join(allowed)} must be given")
    return parse_target(named)


async def presence(request: Request) -> Response:
    """``GET /api/presence?channel=C|user=U``: who is connected, on every pod (presence.py)."""
    return await _presence(request, ("channel", "user"), stats=False)


async def presence_stats(request: Request) -> Response:
    """``GET /api/presence/stats?channel=C``: counts only."""
    return await _presence(request, ("channel",), stats=True)


async def _presence(request: Request, allowed: tuple[str, ...], stats: bool) -> Response:
    gw = _gateway(request)
    if not api_key_ok(request.headers, gw.settings.api_keys):
        return _json(*_error(401, "unauthorized", "missing or invalid API key"))
    try:
        target = _presence_target(request, allowed)
    except ProtocolError as exc:
        return _json(*_error(400, exc.code, exc.message))
    if target.kind == "channel" and target.name is not None:
        namespaces = Namespaces.of_setting(gw.settings.namespaces)
        refused = namespaces.refusal(target.name)
        if refused is not None:
            return _json(*_error(400, "bad_channel", refused))
        if not namespaces.of(target.name).presence:
            message = f"namespace {namespaces.of(target.name).name!r} keeps no presence"
            return _json(*_error(403, "presence_off", message))
    try:
        answer = await gw.presence.query(target)
    except BrokerUnavailable as exc:
        return _json(*_error(503, "unavailable", f"broker unavailable: {exc}"))
    gw.metrics.presence_queries.labels(complete="false" if answer.missing else "true").inc()
    body: dict[str, Any] = {target.kind: target.name}
    if target.kind == "user":
        body.update(sockets=sum(answer.counts.values()), pods=answer.counts)
    elif stats:
        body.update(users=len(answer.counts), sockets=sum(answer.counts.values()))
    else:
        body["users"] = answer.counts
    body.update(answered=answer.answered, missing=answer.missing)
    return _json(200, body)


DISCONNECT_FIELDS = frozenset({"user", "conn", "code", "reason"})


async def disconnect(request: Request) -> Response:
    """``POST /api/disconnect {"user": U, "conn"?, "code"?, "reason"?}``: on every pod."""
    gw = _gateway(request)
    if not api_key_ok(request.headers, gw.settings.api_keys):
        return _json(*_error(401, "unauthorized", "missing or invalid API key"))
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _json(*_error(400, "bad_json", "body is not valid JSON"))
    try:
        user, conn, code, reason = parse_disconnect(body)
    except ProtocolError as exc:
        return _json(*_error(400, exc.code, exc.message))
    try:
        await gw.disconnect(user, code, reason, conn)
    except BrokerUnavailable as exc:
        return _json(*_error(503, "unavailable", f"broker unavailable: {exc}"))
    return _json(202, {"user": user})


def parse_disconnect(body: object) -> tuple[str, str | None, int | None, str | None]:
    if not isinstance(body, dict):
        raise ProtocolError("bad_body", "body must be a JSON object")
    unknown = sorted(set(body) - DISCONNECT_FIELDS)
    if unknown:
        raise ProtocolError("unknown_field", f"no field {unknown[0][:64]!r}")
    if "user" not in body:
        raise ProtocolError("missing_field", "'user' is required")
    user = parse_target({"user": body["user"]}).name
    assert user is not None
    conn = body.get("conn")
    if conn is not None and (not isinstance(conn, str) or not conn or len(conn) > 256):
        raise ProtocolError("bad_field", "'conn' must be a connection id (the welcome's conn)")
    code = body.get("code")
    if code is not None and (
        not isinstance(code, int) or isinstance(code, bool) or not 4000 <= code <= 4999
    ):
        raise ProtocolError(
            "bad_field", "'code' must be 4000-4999 (4000-4499: clients reconnect; 4500-: stop)"
        )
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason.encode()) > 120):
        raise ProtocolError("bad_field", "'reason' must be a string of at most 120 bytes")
    return user, conn, code, reason


async def history(request: Request) -> Response:
    """``GET /api/history``: the history a reconnecting client would get (history_api.py)."""
    gw = _gateway(request)
    if not api_key_ok(request.headers, gw.settings.api_keys):
        return _json(*_error(401, "unauthorized", "missing or invalid API key"))
    try:
        q = history_api.parse_query(request.query_params)
    except ProtocolError as exc:
        return _json(*_error(400, exc.code, exc.message))
    answer = await history_api.query(gw.broker, q, gw.settings.replay_timeout)
    if answer is None:
        return _json(*_error(503, "unavailable", "the history could not be read, retry"))
    return Response(orjson.dumps(answer), media_type="application/json")


def _json(status: int, body: dict[str, Any]) -> Response:
    return JSONResponse(body, status_code=status)


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def shed(request: Request) -> Response:
    """``POST /admin/shed {"count": N}``: the operator's rebalancing."""
    gw = _gateway(request)
    if not token_ok(request.headers, gw.settings.admin_token):
        return _json(*_error(401, "unauthorized", "missing or invalid admin token"))
    try:
        obj = orjson.loads(await request.body())
        count = obj["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return _json(*_error(400, "bad_body", 'body must be {"count": N} with N >= 0'))
    n = gw.shed(count)
    return JSONResponse({"shed": n, "connections": len(gw.hub)})


async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(_gateway(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "pod": _gateway(request).pod_name})


async def readyz(request: Request) -> Response:
    gw = _gateway(request)
    body = {
        "ready": gw.ready,
        "pod": gw.pod_name,
        "broker": gw.broker.ready,
        "draining": gw.draining,
        "connections": len(gw.hub),
    }
    return JSONResponse(body, status_code=200 if gw.ready else 503)


async def client_js(request: Request) -> Response:
    """``GET /clarion.js``: the JS client's IIFE bundle (clients/js, committed built), the
    demo page's; served with the demo page."""
    if not _gateway(request).settings.demo:
        return _json(*_error(404, "not_found", "the demo (and its /clarion.js) is off"))
    js = resources.files("clarion").joinpath("static/clarion.js").read_bytes()
    return Response(js, media_type="text/javascript", headers={"Cache-Control": "no-cache"})


async def index(request: Request) -> Response:
    gw = _gateway(request)
    if not gw.settings.demo:
        return JSONResponse({"service": "clarion", "pod": gw.pod_name})
    return HTMLResponse(resources.files("clarion").joinpath("static/index.html").read_text())
