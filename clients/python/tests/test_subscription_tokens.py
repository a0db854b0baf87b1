"""Subscription tokens in the Python Subscriber, against the scripted gateway: the token in
the subscribe frame, get_token(channel) before subscribing and before exp (a refresh frame
naming the channel), a refused refresh asked again soon, one retry after token_expired."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fakes import FakeGateway, Recorder, token, wait_for, welcome
from websockets.asyncio.server import ServerConnection


def frames_of(gw: FakeGateway, ftype: str) -> list[dict[str, Any]]:
    return [f for f in gw.frames[0] if f.get("type") == ftype] if gw.frames else []


def answering(gw: FakeGateway, answer: Any) -> Any:
    """A step: welcome, then answer each frame the gateway records with ``answer(frame)``
    (None: nothing). The gateway's own reader reads the socket; this follows its record."""

    async def step(ws: ServerConnection) -> None:
        await welcome(ws)
        frames, done = gw.frames[-1], 0
        while ws.close_code is None:
            while done < len(frames):
                reply = answer(frames[done])
                done += 1
                if reply is not None:
                    await ws.send(orjson.dumps(reply))
            await asyncio.sleep(0.01)

    return step


def subscribed(frame: dict[str, Any]) -> dict[str, Any] | None:
    if frame.get("type") == "subscribe":
        return {"type": "subscribed", "channel": frame["channel"]}
    return None


async def test_a_given_token_goes_in_the_subscribe_frame() -> None:
    given = token({"sub": "u", "channel": "doc:1", "exp": int(time.time()) + 600})

    async with FakeGateway([]) as gw:
        gw.steps.append(answering(gw, subscribed))
        async with Recorder().subscriber(gw.url) as sub:
            await wait_for(lambda: sub.state == "connected", 5)
            await sub.subscribe("doc:1", token=given)
            await sub.subscribe("news")
            await wait_for(lambda: sorted(sub.subscribed) == ["doc:1", "news"], 5)
        assert frames_of(gw, "subscribe") == [
            {"type": "subscribe", "channel": "doc:1", "token": given},
            {"type": "subscribe", "channel": "news"},
        ]


async def test_get_token_before_subscribing_and_before_exp_in_band() -> None:
    asked: list[str] = []

    def get_token(channel: str) -> str:
        asked.append(channel)
        return token({"sub": "u", "channel": channel, "exp": int(time.time()) + 2})

    async with FakeGateway([]) as gw:
        gw.steps.append(answering(gw, subscribed))
        async with Recorder().subscriber(gw.url, refresh_margin=1.0) as sub:
            await wait_for(lambda: sub.state == "connected", 5)
            await sub.subscribe("doc:2", get_token=get_token)
            await wait_for(lambda: len(frames_of(gw, "refresh")) >= 2, 6, message="2 refreshes")
            assert len(gw.queries) == 1  # one socket
        assert asked == ["doc:2"] * len(asked) and len(asked) >= 3
        refresh = frames_of(gw, "refresh")[0]
        assert (
            refresh["channel"] == "doc:2"
            and refresh["token"] != frames_of(gw, "subscribe")[0]["token"]
        )


async def test_a_refused_refresh_is_reported_and_asked_again_soon() -> None:
    asked: list[str] = []

    def get_token(channel: str) -> str:
        asked.append(channel)
        return token({"sub": "u", "channel": channel, "exp": int(time.time()) + 2})

    def refuse_refreshes(frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame.get("type") == "refresh":
            return {"type": "error", "code": "bad_token", "message": "no", "channel": "doc:3"}
        return subscribed(frame)

    rec = Recorder()
    async with FakeGateway([]) as gw:
        gw.steps.append(answering(gw, refuse_refreshes))
        async with rec.subscriber(gw.url, refresh_margin=1.0) as sub:
            await wait_for(lambda: sub.state == "connected", 5)
            await sub.subscribe("doc:3", get_token=get_token)
            await wait_for(lambda: len(frames_of(gw, "refresh")) >= 2, 6, message="2 refreshes")
            assert sub.channels == ["doc:3"]  # kept: the server ends it, if anyone
    assert rec.errors and rec.errors[0][0] == "token" and "doc:3" in rec.errors[0][1]


async def test_a_subscribe_refused_as_expired_gets_one_new_token() -> None:
    asked: list[str] = []

    def get_token(channel: str) -> str:
        asked.append(channel)
        return token({"sub": "u", "channel": channel, "exp": int(time.time()) + 600})

    def always_expired(frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame.get("type") == "subscribe":
            return {"type": "error", "code": "token_expired", "message": "x", "channel": "doc:4"}
        return None

    rec = Recorder()
    async with FakeGateway([]) as gw:
        gw.steps.append(answering(gw, always_expired))
        async with rec.subscriber(gw.url) as sub:
            await wait_for(lambda: sub.state == "connected", 5)
            await sub.subscribe("doc:4", get_token=get_token)
            await wait_for(lambda: len(frames_of(gw, "subscribe")) == 2, 5)
            await asyncio.sleep(0.2)  # no third try
            assert len(frames_of(gw, "subscribe")) == 2 and len(asked) == 2
