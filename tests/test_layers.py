"""Dependencies point one way: a layer imports the layers below it, never one above.

Each module below is imported alone in a fresh interpreter, and every ``clarion``
module that came with it must belong to its own layer or a lower one. The
modules not listed sit above every layer (the pod, its HTTP and socket parts).
A failure names the module, what it pulled in and the layer that may not be
reached from it: move the shared piece down, or pass a value in from above
(as ``gateway.broker_options`` hands the broker its options).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Lowest first. A module belongs to the first layer naming it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("names and parsers", ("clarion.names", "clarion.envvars")),
    # namespaces.py parses and answers the --namespaces setting (config validates it).
    ("settings", ("clarion.config", "clarion.namespaces")),
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
    "clarion.namespaces",
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
    "clarion.broker.fastpublish",
    "clarion.broker.channels",
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


def imports_in_source(module: str) -> set[str]:
    """Every module ``module``'s source names in an import, inside functions too (an import
    deferred into a function is still a dependency)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # ``from . import x`` names the module x
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", CHECKED)
def test_no_import_of_a_higher_layer_even_inside_a_function(module: str) -> None:
    own = layer_of(module)
    named = imports_in_source(module)
    above = sorted(
        m for m in named if m.startswith("clarion.") and layer_of(m) > own and _is_module(m)
    )
    assert not above, (
        f"{module} (layer {layer_name(own)!r}) names modules of higher layers in its imports: "
        + ", ".join(f"{m} ({layer_name(layer_of(m))})" for m in above)
    )


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_every_module_of_a_layer_is_checked() -> None:
    """A new module in a layer's package is imported alone too (else it escapes the rule)."""
    import pkgutil

    import clarion.broker

    broker = {f"clarion.broker.{m.name}" for m in pkgutil.iter_modules(clarion.broker.__path__)}
    assert broker <= set(CHECKED), sorted(broker - set(CHECKED))
