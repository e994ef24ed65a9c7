"""MkDocs hook: the site's home page is the repository's README.md (one front door for GitHub and the site).

docs/index.md holds only the marker below. The README links into docs/ with paths GitHub resolves
(`docs/operations.md`, `docs/images/registry.png`); on the site those pages sit one folder up, so the
`docs/` prefix of relative links is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- README.md -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/index.md lost its marker {MARKER}")
    readme = re.sub(r"\]\(docs/", "](", README.read_text())
    return markdown.replace(MARKER, readme)
