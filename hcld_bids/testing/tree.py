"""Fingerprints of directory trees, to prove that a run wrote nothing into a directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_snapshot(root: str | os.PathLike) -> dict[str, str]:
    """Map every entry under ``root`` (relative POSIX path) to a digest of what it is.

    Files map to the sha256 of their content, directories to ``"dir"``, symbolic links to
    ``"link:<target>"`` (links are not followed). Comparing two snapshots shows what was added, removed or
    changed; modification times are ignored on purpose (reading must not count as writing).
    """
    root = Path(root)
    snapshot: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames + sorted(filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                snapshot[rel] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                snapshot[rel] = "dir"
            else:
                snapshot[rel] = _file_digest(path)
    return snapshot


def hash_tree(root: str | os.PathLike) -> str:
    """One sha256 hex digest of the names and contents of everything under ``root``."""
    digest = hashlib.sha256()
    for rel, value in sorted(tree_snapshot(root).items()):
        digest.update(f"{rel}\0{value}\n".encode())
    return digest.hexdigest()
