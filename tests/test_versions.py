"""scripts/versions.py, the release's check that every published version agrees (the server,
its pin on the client, the Python client, the npm package, the chart and its images' tag),
run as the release workflow runs it, on this tree and on copies with one place changed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .support import REPO

pytestmark = pytest.mark.timeout(60)

SCRIPT = REPO / "scripts" / "versions.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("clarion_versions_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


versions = _load()


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the files that carry a version."""
    for file in {p.file for p in versions.PLACES}:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / file, tmp_path / file)
    return tmp_path


def server_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def test_every_version_of_this_tree_agrees() -> None:
    done = run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == server_version()
    assert len(versions.versions()) == len(versions.PLACES) == 10


@pytest.mark.parametrize("place", versions.PLACES, ids=lambda p: f"{p.file}:{p.what}")
def test_one_place_that_disagrees_fails_the_check_and_is_named(tree: Path, place: Any) -> None:
    place.write(tree, "9.9.9")
    done = run("--root", tree)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == "versions disagree:"
    assert [line for line in lines if line.split()[0] == "9.9.9"] == [
        f"  9.9.9  {place.file}: {place.what}"
    ]


@pytest.mark.parametrize(
    ("tag", "agrees"),
    [("v{v}", True), ("{v}", True), ("v{v}.1", False), ("v9.9.9", False), ("v{v}-rc.1", False)],
)
def test_the_git_tag_must_agree_too(tag: str, agrees: bool) -> None:
    tag = tag.format(v=server_version())
    done = run("--tag", tag)
    assert (done.returncode == 0) is agrees, done.stderr
    if not agrees:
        assert f"the git tag {tag}" in done.stderr


def test_set_writes_every_place_and_nothing_else(tree: Path) -> None:
    before = {p.file: (tree / p.file).read_text() for p in versions.PLACES}
    done = run("--root", tree, "--set", "2.10.0")
    assert done.returncode == 0 and done.stdout.strip() == "2.10.0", done.stderr
    # The files still parse, with the new version where each tool reads it.
    chart = yaml.safe_load((tree / "charts/clarion/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == ("2.10.0", "2.10.0")
    assert json.loads((tree / "clients/js/package.json").read_text())["version"] == "2.10.0"
    server = tomllib.loads((tree / "pyproject.toml").read_text())["project"]
    assert "clarion-client==2.10.0" in server["dependencies"]
    # Only the version lines changed.
    for file, text in before.items():
        old, new = text.splitlines(), (tree / file).read_text().splitlines()
        assert len(old) == len(new), file
        changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
        assert changed and all(a.replace(server_version(), "2.10.0") == b for a, b in changed)


@pytest.mark.parametrize("bad", ["1.2", "v1.2.3", "1.2.3-rc.1", "1.2.3rc1", "1.2.3.4", ""])
def test_set_takes_only_a_release_version(tree: Path, bad: str) -> None:
    before = (tree / "pyproject.toml").read_text()
    done = run("--root", tree, "--set", bad)
    assert done.returncode != 0
    assert (tree / "pyproject.toml").read_text() == before


def test_a_server_without_its_pin_on_the_client_is_an_error(tree: Path) -> None:
    path = tree / "pyproject.toml"
    path.write_text(path.read_text().replace('"clarion-client==', '"clarion-client>='))
    done = run("--root", tree)
    assert done.returncode != 0 and "no dependency clarion-client==VERSION" in done.stderr
