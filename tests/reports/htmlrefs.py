"""Collect what an HTML page refers to (src and href attributes), for the reports' self-containment tests."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.references: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.references.append((tag, name, value))


def references(html: str) -> list[tuple[str, str, str]]:
    """(tag, attribute, value) of every src/href in ``html``."""
    parser = _References()
    parser.feed(html)
    return parser.references


def local_files(page: Path) -> list[Path]:
    """Files a page refers to by relative path (data: URIs, in-page anchors and web links excluded)."""
    files = []
    for _, _, value in references(page.read_text()):
        parsed = urlparse(value)
        if parsed.scheme or value.startswith("#") or not parsed.path:
            continue
        files.append(page.parent / unquote(parsed.path))
    return files


def external(page: Path) -> list[str]:
    """Resources (src) the page would fetch from the network: a self-contained page has none."""
    return [v for tag, name, v in references(page.read_text()) if name == "src" and urlparse(v).scheme in ("http", "https")]
