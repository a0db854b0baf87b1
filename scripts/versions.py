#!/usr/bin/env python3
"""Every version a release publishes agrees: the server (pyproject.toml, and the
``__version__`` it reports) and the client it pins, the Python client (clients/python), the
npm package (clients/js), the chart (version and appVersion, which name the images' tag),
and the chart version of the README's install command.

    scripts/versions.py               # prints the version, or what disagrees (exit 1)
    scripts/versions.py --tag v0.2.0  # ... and the git tag (the release workflow's check)
    scripts/versions.py --set 0.2.0   # writes the version into every place above

Standard library only: the release workflow runs it before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = "pyproject.toml"
SERVER_INIT = "service/clarion/__init__.py"
README = "README.md"
CLIENT = "clients/python/pyproject.toml"
NPM = "clients/js/package.json"
NPM_LOCK = "clients/js/package-lock.json"
CHART = "charts/clarion/Chart.yaml"
#: The server's requirement on the client: exactly the release's version.
PIN = re.compile(r"clarion-client==([\w.+-]+)")
#: What a release's version looks like (the release workflow runs on tags vX.Y.Z).
RELEASE = re.compile(r"\d+\.\d+\.\d+")
#: A top-level key of Chart.yaml (no YAML parser in the standard library).
CHART_KEY = r'(?m)^{key}:[ \t]*"?([^"\s]+)"?[ \t]*$'


def _project(path: Path) -> str:
    return str(tomllib.loads(path.read_text())["project"]["version"])


def _pin(path: Path) -> str:
    deps = tomllib.loads(path.read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := PIN.fullmatch(d))]
    if len(pins) != 1:
        raise ValueError(f"{path}: no dependency clarion-client==VERSION")
    return pins[0]


def _search(pattern: str) -> Callable[[Path], str]:
    """The first group of ``pattern``'s first match."""

    def read(path: Path) -> str:
        m = re.search(pattern, path.read_text())
        if m is None:
            raise ValueError(f"{path}: {pattern} not found")
        return m.group(1)

    return read


def _json(*keys: str) -> Callable[[Path], str]:
    def read(path: Path) -> str:
        value = json.loads(path.read_text())
        for key in keys:
            value = value[key]
        return str(value)

    return read


def _chart(key: str) -> Callable[[Path], str]:
    return _search(CHART_KEY.format(key=key))


@dataclass(frozen=True)
class Place:
    """One place a version is written: how to read it, and a pattern whose two groups
    surround it (``--set`` edits the text, so comments and layout stay)."""

    file: str
    what: str
    read: Callable[[Path], str]
    pattern: str

    def write(self, root: Path, version: str) -> None:
        path = root / self.file
        text, n = re.subn(self.pattern, rf"\g<1>{version}\g<2>", path.read_text(), count=1)
        if n != 1:
            raise ValueError(f"{self.file}: {self.what} not found")
        path.write_text(text)


PLACES = [
    Place(SERVER, "version (clarion)", _project, r'(?m)^(version = ")[^"]+(")'),
    Place(SERVER, "clarion-client==", _pin, r'("clarion-client==)[^"]+(")'),
    Place(
        SERVER_INIT,
        "__version__",
        _search(r'(?m)^__version__ = "([^"]+)"'),
        r'(?m)^(__version__ = ")[^"]+(")',
    ),
    Place(CLIENT, "version (clarion-client)", _project, r'(?m)^(version = ")[^"]+(")'),
    Place(NPM, "version", _json("version"), r'(?m)^(  "version": ")[^"]+(")'),
    Place(NPM_LOCK, "version", _json("version"), r'(?m)^(  "version": ")[^"]+(")'),
    # The first "version" after the lock's packages[""] entry opens.
    Place(
        NPM_LOCK,
        'packages[""].version',
        _json("packages", "", "version"),
        r'(?s)("": \{.*?"version": ")[^"]+(")',
    ),
    Place(CHART, "version", _chart("version"), r"(?m)^(version:[ \t]*)[^\s#]+()"),
    Place(
        CHART,
        "appVersion (the images' tag)",
        _chart("appVersion"),
        r'(?m)^(appVersion:[ \t]*"?)[^"\s#]+("?)',
    ),
    Place(
        README,
        "helm install ... --version",
        _search(r"helm install \S+ oci://\S+ --version (\S+)"),
        r"(helm install \S+ oci://\S+ --version )\S+()",
    ),
]


def versions(root: Path = ROOT) -> list[tuple[str, str]]:
    """(where, version) for every place a version is written."""
    return [(f"{p.file}: {p.what}", p.read(root / p.file)) for p in PLACES]


def check(root: Path = ROOT, tag: str | None = None) -> tuple[str | None, list[str]]:
    """The one version, or None and a line per place saying what it holds."""
    found = versions(root)
    if tag is not None:
        found.append((f"the git tag {tag}", tag.removeprefix("v")))
    if len({v for _, v in found}) == 1:
        return found[0][1], []
    width = max(len(v) for _, v in found)
    return None, [f"  {v:<{width}}  {where}" for where, v in found]


def set_version(version: str, root: Path = ROOT) -> None:
    """Writes ``version`` into every place."""
    for place in PLACES:
        place.write(root, version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", help="the release's git tag (vX.Y.Z): it must agree too")
    parser.add_argument("--set", metavar="VERSION", help="write VERSION everywhere, then check")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.set is not None and not RELEASE.fullmatch(args.set):
        # PEP 440 and SemVer write pre-releases differently (1.0.0rc1, 1.0.0-rc.1).
        parser.error(f"--set {args.set!r}: a release version is X.Y.Z")
    try:
        if args.set is not None:
            set_version(args.set, args.root)
        version, disagreement = check(args.root, args.tag)
    except (OSError, ValueError, KeyError) as exc:
        print(f"versions.py: {exc}", file=sys.stderr)
        return 1
    if version is None:
        print("versions disagree:", *disagreement, sep="\n", file=sys.stderr)
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
