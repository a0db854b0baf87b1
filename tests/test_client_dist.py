"""``pip install clarion-client`` gives a backend the client and nothing of the server.

The wheel is built from clients/python as the release workflow builds it, installed into
an empty venv of its own (its three dependencies come from the package index), and used
there from outside the repository: Publisher, AsyncPublisher and Subscriber import, and
none of the server's dependencies is installed or imported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from .support import REPO
from .test_docs import anchors, links

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CLIENT = REPO / "clients" / "python"
#: The server's own dependencies (and the server): none may come with the client.
SERVER_ONLY = {
    "clarion": "clarion",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "aio-pika": "aio_pika",
    "aiormq": "aiormq",
    "pamqp": "pamqp",
    "pyjwt": "jwt",
    "uvloop": "uvloop",
    "prometheus-client": "prometheus_client",
    "httptools": "httptools",
    "kopf": "kopf",
}

#: Run inside the new venv, from a folder outside the repository.
PROBE = """
import importlib.util, json, sys
import httpx
from clarion_client import AsyncPublisher, Publisher, Subscriber
import clarion_client

def answer(request):
    return httpx.Response(202, json={"id": "m1"})

with Publisher("http://gw", client=httpx.Client(transport=httpx.MockTransport(answer))) as p:
    published = p.publish({"order": 42}, user="u1")
print(json.dumps({
    "file": clarion_client.__file__,
    "version": clarion_client.__version__,
    "published": published,
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "findable": {m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]},
}))
"""


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From a clean copy: setuptools builds in the source folder and packs whatever its
    # build/lib holds, so a stale build/ there could ship modules the tree no longer has.
    src = tmp_path_factory.mktemp("src") / "python"
    shutil.copytree(
        CLIENT, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src, cwd=out)
    (built,) = out.glob("clarion_client-*.whl")
    return built


def test_the_wheel_holds_the_client_and_declares_only_its_three_dependencies(
    wheel: Path,
) -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert wheel.name.startswith(f"clarion_client-{project['version']}-py3-none-any")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"clarion_client"}  # no server, no tests
    assert "clarion_client/py.typed" in names
    required = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(re.split(r"[ ;<>=!~\[(]", r)[0] for r in required) == [
        "httpx",
        "orjson",
        "websockets",
    ]


def pip(venv: Path, *args: str | Path, cwd: Path) -> str:
    """This pip, run on the venv's interpreter (``--python``): the venv needs no pip of its
    own (installing one is most of what creating it costs), and it has nothing else."""
    return run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", *args, cwd=cwd)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty venv with the wheel installed (its dependencies from the index)."""
    venv = tmp_path_factory.mktemp("client") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent)
    pip(venv, "install", "-q", wheel, cwd=venv.parent)
    return venv


def test_an_empty_venv_gets_the_client_and_nothing_of_the_server(
    venv: Path, tmp_path: Path
) -> None:
    python = venv / "bin" / "python"
    listed = json.loads(pip(venv, "list", "--format", "json", cwd=tmp_path))
    installed = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"clarion-client", "httpx", "websockets", "orjson"} <= installed
    assert installed.isdisjoint(SERVER_ONLY), installed & set(SERVER_ONLY)

    # -I: the repository (cwd, PYTHONPATH, user site) is not on the path.
    found: dict[str, Any] = json.loads(
        run(python, "-I", "-c", PROBE, *SERVER_ONLY.values(), cwd=tmp_path)
    )
    assert Path(found["file"]).is_relative_to(venv)
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert found["version"] == project["version"]
    assert found["published"] == "m1"
    assert not set(found["modules"]) & set(SERVER_ONLY.values())
    assert not any(found["findable"].values()), found["findable"]


def test_the_clients_own_tests_pass_on_the_installed_wheel(venv: Path, wheel: Path) -> None:
    """clients/python/tests need the client and pytest, nothing of the server or the repo's
    test helpers; run from clients/python, they import the wheel (src/ is not on the path)."""
    python = venv / "bin" / "python"
    pip(venv, "install", "-q", f"{wheel}[test]", cwd=venv.parent)
    where = run(python, "-c", "import clarion_client; print(clarion_client.__file__)", cwd=CLIENT)
    assert Path(where.strip()).is_relative_to(venv)
    out = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=CLIENT)
    assert re.search(r"^\d+ passed in ", out.splitlines()[-1]), out[-2000:]


def test_the_readme_pypi_shows_links_to_pages_that_exist() -> None:
    """PyPI renders clients/python/README.md without the repository around it, so its links
    are absolute; each names a file of this tree (and a heading of it) on the project's home."""
    home = re.search(r"(?m)^home: (\S+)$", (REPO / "charts/clarion/Chart.yaml").read_text())
    assert home
    prefix = f"{home.group(1)}/blob/main/"
    readme = CLIENT / "README.md"
    checked = 0
    for path, anchor in links(readme):
        assert not path.startswith(("../", "./")), f"a relative link breaks on PyPI: {path}"
        if not path.startswith(prefix):
            continue
        target = REPO / path.removeprefix(prefix)
        assert target.exists(), path
        assert not anchor or anchor in anchors(target), f"{path}#{anchor}"
        checked += 1
    assert checked >= 3
