"""The docs say what the code does, and every link in them leads somewhere.

The README is a landing page (run, test, install, use, the diagram, a map of the code, links);
the reference lives in docs/, one page per topic, built into a site by mkdocs (mkdocs.yml).
The generated tables live on their pages: the settings on docs/configuration.md, the close
codes on docs/protocol.md, and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clarion import config, disconnects
from clarion.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
PROTOCOL = DOCS / "protocol.md"
SERVICE = REPO / "service" / "clarion"
README_BUDGET = 10 * 1024  # bytes: a landing page, not a reference

pytestmark = pytest.mark.timeout(60)


def pages() -> list[Path]:
    """The Markdown a reader meets: the README, the docs pages and the clients' READMEs."""
    return [README, *sorted(DOCS.glob("*.md")), *sorted((REPO / "clients").glob("*/README.md"))]


def test_the_configuration_page_shows_the_declared_settings() -> None:
    """Every setting is declared once (config.py); docs/configuration.md shows those."""
    assert config.markdown_table() in CONFIGURATION.read_text(), (
        "docs/configuration.md's settings table differs from the declarations; regenerate it with\n"
        "python -c 'from clarion import config; print(config.markdown_table())'"
    )


def test_the_protocol_page_holds_the_one_close_code_table() -> None:
    table = disconnects.markdown_table()
    assert table in PROTOCOL.read_text(), (
        "docs/protocol.md's close codes differ from disconnects.py; regenerate with\n"
        "python -c 'from clarion import disconnects; print(disconnects.markdown_table())'"
    )
    header = table.splitlines()[0]
    copies = [p.relative_to(REPO) for p in pages() if p != PROTOCOL and header in p.read_text()]
    assert not copies, f"{copies} copy the close-code table: link to docs/protocol.md instead"


def test_every_declared_setting_is_a_serve_flag_and_reads_its_env_var() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    flags = {a.option_strings[0]: a for a in serve._actions if a.option_strings}
    for opt in config.options():
        assert opt.flag in flags, opt.flag
        assert opt.env in flags[opt.flag].help, (opt.flag, opt.env)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:800]
    assert "make run" in head and "make test" in head
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_the_readme_is_a_landing_page() -> None:
    size = len(README.read_bytes())
    assert size <= README_BUDGET, (
        f"README.md is {size} bytes (budget {README_BUDGET}): move reference material to docs/"
    )


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (README.parent / href).resolve()
        for href, _ in links(README)
        if href and not re.match(r"[a-z]+:", href)
    }
    missing = [
        p.relative_to(REPO) for p in DOCS.glob("*.md") if p.name != "index.md" and p not in linked
    ]
    assert not missing, f"README.md does not link {missing}"


def test_the_site_nav_and_home_list_every_docs_page() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    missing = [
        p.name for p in DOCS.glob("*.md") if not re.search(rf":\s*{re.escape(p.name)}$", nav, re.M)
    ]
    assert not missing, f"mkdocs.yml's nav leaves out {missing}"
    home = {path for path, _ in links(DOCS / "index.md")}
    unlisted = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in home]
    assert not unlisted, f"docs/index.md's table of pages leaves out {unlisted}"


def test_the_code_map_names_every_module_of_the_service() -> None:
    """The README's map of the code names each module, and each module it names exists."""
    text = README.read_text()
    code_map = text[text.index("## The code") :]
    named = set(re.findall(r"`((?:broker/)?\w+\.py)`", code_map))
    modules = {
        str(p.relative_to(SERVICE))
        for p in SERVICE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and p.parent.name in ("clarion", "broker")
    }
    assert not modules - named, f"the README's map of the code leaves out {sorted(modules - named)}"
    assert not named - modules, (
        f"the README's map names modules that are gone: {sorted(named - modules)}"
    )


PATH = re.compile(
    r"`((?:service|operator|charts|clients|tests|testkit|bench|docs|scripts|k8s|\.github)"
    r"/[\w./-]+)`"
)


def test_paths_the_docs_name_exist() -> None:
    """A path in backticks (`service/clarion/config.py`, `tests/ha`) names a file or folder."""
    gone = []
    for page in pages():
        for path in PATH.findall(page.read_text()):
            if not any(c in path for c in "*<>") and not (REPO / path.rstrip("/.")).exists():
                gone.append(f"{page.relative_to(REPO)}: {path}")
    assert not gone, "the docs name paths that do not exist:\n" + "\n".join(gone)


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def links(page: Path) -> list[tuple[str, str]]:
    """(path, anchor) of each Markdown link of a page, code blocks left out."""
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for m in LINK.finditer(text):
        href = m.group(1) or m.group(2)
        path, _, anchor = href.partition("#")
        out.append((path, anchor))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (mkdocs.yml's toc slugify makes the same)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[`*_]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} (.+?)\s*#*$", FENCE.sub("", page.read_text()), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = []
    for page in pages():
        for path, anchor in links(page):
            if re.match(r"[a-z]+:", path):  # http:, https:, mailto:
                continue
            target = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {path}{'#' + anchor if anchor else ''}"
            if not target.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_a_broken_anchor() -> None:
    """The checker's own slugs: GitHub's, punctuation dropped, each space a dash."""
    assert slug("Against Node socket.io + Redis, and batched publishes") == (
        "against-node-socketio--redis-and-batched-publishes"
    )
    assert (
        slug("Before `helm install` on a real cluster") == "before-helm-install-on-a-real-cluster"
    )
    assert "close-codes" in anchors(PROTOCOL)
    assert "no-such-heading" not in anchors(PROTOCOL)


@pytest.mark.timeout(120)
def test_the_docs_site_builds_strict(tmp_path: Path) -> None:
    """mkdocs build --strict: a broken link or anchor between pages, or a page out of the nav,
    fails the build."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "index.html").exists()
    assert (site / "protocol" / "index.html").exists()
    page = (site / "configuration" / "index.html").read_text()
    assert "CLARION_ROUTING" in page  # the generated settings table made it into the site
    home = (site / "index.html").read_text()  # a link out of docs/ leads to the repository
    assert 'href="https://github.com/clarion-dev/clarion/blob/main/README.md"' in home
