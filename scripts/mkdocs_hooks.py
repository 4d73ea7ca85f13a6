"""mkdocs hook: links from docs/ to files elsewhere in the repository.

The pages are also read on a code host, where `[backends/llamacpp/](../backends/llamacpp/README.md)`
is a working link. On the site that target does not exist, so such links become a link to
`repo_url` when mkdocs.yml sets one, and otherwise plain text naming the repository path. A link
to a repository path that does not exist is a warning, so `mkdocs build --strict` still catches
it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.lmprog")

LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = docs.parent
    page_dir = (docs / page.file.src_path).parent

    def rewrite(match: re.Match[str]) -> str:
        target = match["target"]
        if "://" in target or target.startswith(("#", "mailto:")):
            return match[0]
        path = (page_dir / target.split("#")[0]).resolve()
        if path.is_relative_to(docs):
            return match[0]  # a page of the site: mkdocs checks it
        if not path.is_relative_to(repo) or not path.exists():
            log.warning(
                "%s links to %r, which is not in the repository", page.file.src_path, target
            )
            return match[0]
        relative = path.relative_to(repo).as_posix() + ("/" if path.is_dir() else "")
        if config.get("repo_url"):
            kind = "tree" if path.is_dir() else "blob"
            return f"[{match['text']}]({config['repo_url'].rstrip('/')}/{kind}/main/{relative})"
        text = match["text"]
        return text if relative.rstrip("/") in text else f"{text} (`{relative}` in the repository)"

    return LINK.sub(rewrite, markdown)
