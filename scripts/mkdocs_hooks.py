"""mkdocs hook: a link from docs/ to a file outside it (../README.md, ../clients/js/README.md,
../bench/scale.png) points at that file in the repository on the site, as it does on GitHub.

mkdocs.yml names this file under `hooks:`; `repo_url` there is the repository. Links inside
docs/ are left to mkdocs (and fail `mkdocs build --strict` when broken); tests/test_docs.py
checks that every link out of docs/ names a file that exists.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def outside(src_path: str, target: str) -> str | None:
    """The repository path of a relative link that leaves docs/, else None."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
        return None
    path = posixpath.normpath(posixpath.join("docs", posixpath.dirname(src_path), target))
    return None if path == "docs" or path.startswith("docs/") else path


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    repo = str(config["repo_url"]).rstrip("/")

    def rewrite(m: re.Match[str]) -> str:
        image, text, target, anchor = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        path = outside(page.file.src_path, target)
        if path is None:
            return m.group(0)
        kind = "raw" if image else "blob"
        return f"{image}[{text}]({repo}/{kind}/main/{path}{anchor})"

    return LINK.sub(rewrite, markdown)
