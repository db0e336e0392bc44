"""Small helpers for tools that run programs and manage files on the host
(install, the local cluster): one copy of each."""

from __future__ import annotations

import shutil
from pathlib import Path


def last_line(text: str) -> str:
    """The last non-empty line of a program's output (its error, usually)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def remove_path(path: Path) -> None:
    """Remove a file, a symlink (not its target) or a directory tree; nothing if absent."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
