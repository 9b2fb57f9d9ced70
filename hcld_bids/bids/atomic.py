"""Write files so that a reader never sees a half-written file under its final name.

Everything is first written under a hidden temporary name in the destination directory (same file system,
so the final ``os.replace`` is atomic), then renamed. A process killed midway leaves at most a hidden
``.tmp-*`` file, which BIDS tools ignore and the next run overwrites. Several processes writing the same
file at once each rename a complete file; the last one wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A unique hidden name next to ``path`` that keeps its extensions (``.nii.gz`` stays last)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error removed.

    An ``OSError`` (e.g. ``ENOSPC``, disk full) is re-raised with ``path`` as its file name.

    >>> with atomic_path(out / "img.nii.gz") as tmp:  # doctest: +SKIP
    ...     nib.save(img, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        # name the file the caller meant (a full disk raises from write() with no file name, or names
        # the hidden temporary); same errno, so the same OSError subclass
        if err.filename is None or str(err.filename) == str(tmp):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        if tmp.exists() or tmp.is_symlink():
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, content) -> Path:
    """Write ``content`` as indented JSON (keys in the given order, trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(content, indent=2) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (content and permission bits)."""
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return Path(dst)


def remove_stale_temporaries(output_dir: str | os.PathLike, subjects, older_than: float) -> list[Path]:
    """Remove what killed jobs of ``subjects`` left behind in ``output_dir``; return what was removed.

    Those are hidden ``.tmp-*`` files and staging directories: anywhere under ``sub-<label>/``, and at the
    root when their name carries ``sub-<label>`` (staging directories of the sink, temporary reports).
    Only entries last modified before ``older_than`` (a time stamp: when this run started) go, so nothing
    a job running now is writing is touched; jobs on other subjects never match.
    """
    import re

    output_dir = Path(output_dir)
    removed = []
    for label in sorted(set(subjects)):
        tagged = re.compile(rf"sub-{re.escape(label)}(?![a-zA-Z0-9])")
        candidates = [p for p in output_dir.glob(f"{TMP_PREFIX}*") if tagged.search(p.name)]
        subject_dir = output_dir / f"sub-{label}"
        if subject_dir.is_dir():
            candidates += subject_dir.rglob(f"{TMP_PREFIX}*")
        for path in candidates:
            try:
                if path.lstat().st_mtime >= older_than:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed
