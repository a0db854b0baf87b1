"""The order the quick run hands files to its workers (tests/conftest.py slow_files_first)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.conftest import slow_files_first


def item(path: str, slow: bool = False) -> Any:
    return SimpleNamespace(
        path=Path(path), name=path, get_closest_marker=lambda name: slow and name == "slow"
    )


def test_files_with_a_slow_test_go_first_then_the_larger_files_each_in_its_own_order() -> None:
    items = [
        item("a.py"),
        item("b.py"),
        item("b.py"),
        item("c.py"),
        item("c.py", slow=True),
        item("d.py", slow=True),
        item("a.py"),
        item("a.py"),
    ]
    before = {id(i): n for n, i in enumerate(items)}
    slow_files_first(items)
    assert [str(i.path) for i in items] == [
        "c.py",
        "c.py",
        "d.py",
        "a.py",
        "a.py",
        "a.py",
        "b.py",
        "b.py",
    ]
    for path in ("a.py", "c.py"):  # a file's tests keep their order
        mine = [before[id(i)] for i in items if str(i.path) == path]
        assert mine == sorted(mine)
