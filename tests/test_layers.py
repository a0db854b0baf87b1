"""Dependencies point one way: a layer imports the layers below it, never one above.

Each module below is imported alone in a fresh interpreter, and every ``clarion``
module that came with it must belong to its own layer or a lower one. The
modules not listed sit above every layer (the pod, its HTTP and socket parts).
A failure names the module, what it pulled in and the layer that may not be
reached from it: move the shared piece down, or pass a value in from above
(as ``gateway.broker_options`` hands the broker its options).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Lowest first. A module belongs to the first layer naming it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("names and parsers", ("clarion.names", "clarion.envvars")),
    ("settings", ("clarion.config",)),
    ("message model", ("clarion.message",)),
    ("broker", ("clarion.broker",)),
]

#: The web server and framework belong to the layers above all of these.
SERVER_PACKAGES = ("uvicorn", "starlette")

#: Modules imported alone: every module of the layers (the broker's backends each).
CHECKED = [
    "clarion.names",
    "clarion.envvars",
    "clarion.config",
    "clarion.message",
    "clarion.broker",
    "clarion.broker.base",
    "clarion.broker.memory",
    "clarion.broker.rabbitmq",
    "clarion.broker.codec",
    "clarion.broker.history",
    "clarion.broker.routing",
    "clarion.broker.topology",
    "clarion.broker.catchup",
    "clarion.broker.acks",
    "clarion.broker.fastconsume",
]


def layer_of(module: str) -> int:
    """The index of ``module``'s layer; ``len(LAYERS)`` for a module above them all."""
    for i, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return i
    return len(LAYERS)


def layer_name(index: int) -> str:
    return LAYERS[index][0] if index < len(LAYERS) else "above every layer"


def imported_with(module: str) -> list[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("module", CHECKED)
def test_a_module_imports_only_its_layer_and_those_below(module: str) -> None:
    own = layer_of(module)
    assert own < len(LAYERS), f"{module} is checked but in no layer of LAYERS"
    loaded = imported_with(module)
    above = sorted(m for m in loaded if m.startswith("clarion.") and layer_of(m) > own)
    assert not above, (
        f"{module} (layer {layer_name(own)!r}) imports modules of higher layers: "
        + ", ".join(f"{m} ({layer_name(layer_of(m))})" for m in above)
    )
    server = sorted(m for m in loaded if m.split(".")[0] in SERVER_PACKAGES)
    assert not server, f"{module} ({layer_name(own)!r}) imports the web server: {server[:5]}"


def test_every_module_of_a_layer_is_checked() -> None:
    """A new module in a layer's package is imported alone too (else it escapes the rule)."""
    import pkgutil

    import clarion.broker

    broker = {f"clarion.broker.{m.name}" for m in pkgutil.iter_modules(clarion.broker.__path__)}
    assert broker <= set(CHECKED), sorted(broker - set(CHECKED))
