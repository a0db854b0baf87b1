"""The Python client's close-code table (clients/python, ``clarion_client``) is the server's
and the JS client's; the client's own tests are in clients/python/tests."""

from __future__ import annotations

import re

import pytest

import clarion.client
import clarion_client
from clarion import disconnects
from clarion_client import CLOSE_CODES, Action, Backoff, close_action

from .support import REPO

pytestmark = pytest.mark.timeout(30)


def test_the_table_is_the_js_clients() -> None:
    ts = (REPO / "clients/js/src/close-codes.ts").read_text()
    js = {int(c): a for c, a in re.findall(r'(\d{4}): \{ name: "[^"]*", action: "(\w+)" \}', ts)}
    assert js == {code: info.action.value for code, info in CLOSE_CODES.items()}


@pytest.mark.parametrize("d", disconnects.ALL, ids=lambda d: f"{d.code}-{d.label}")
def test_the_client_does_what_the_servers_table_says(d: disconnects.Disconnect) -> None:
    """Each server close's documented client action (disconnects.py) is the client's."""
    action = close_action(d.code)
    text = d.action
    if d.code == 1000:
        assert action is Action.STOP
    elif text.startswith("stop"):
        assert action is Action.FATAL
    elif text == disconnects.SOON:
        assert action is Action.SOON
    elif "at least 2 s" in text:
        assert action is Action.SLOW
        assert Backoff().slow_min == 2.0
    elif "new token" in text:
        assert action is Action.TOKEN
    else:
        assert text == disconnects.BACKOFF and action is Action.BACKOFF


def test_clarion_client_stays_importable_from_the_server_as_the_same_objects() -> None:
    """``from clarion.client import Publisher`` (the server's old home of the client) is
    a re-export of clarion_client: one copy of the code."""
    assert clarion.client.__all__ == clarion_client.__all__
    for name in clarion_client.__all__:
        assert getattr(clarion.client, name) is getattr(clarion_client, name), name
