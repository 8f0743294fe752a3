"""An output folder that is written whole or not at all.

    if why := occupied(out): refuse unless the user asked to overwrite
    with replacing(out) as tmp:   # a new sibling folder
        write everything into tmp
    # success: tmp is now `out` (an old `out` was moved aside, then removed)
    # failure (an exception, strict mode, Ctrl-C): tmp is removed, `out` is as it was

A kill -9 mid-write leaves only a hidden `.<name>.<hex>.tmp` sibling, never a half-written `out`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator, Optional


def occupied(path: str) -> Optional[str]:
    """Why writing `path` would replace something (e.g. "holds 4 files"), or None if it is free."""
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path) or os.path.islink(path):
        return "is not a folder"
    n = len(os.listdir(path))
    return f"holds {n} file{'s' * (n != 1)}" if n else None


def _sibling(path: str, suffix: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.{suffix}")


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a new empty sibling folder; when the block returns it takes `path`'s place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _sibling(path, "tmp")
    os.mkdir(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        old = _sibling(path, "old")
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old:
            os.rename(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old:
        (shutil.rmtree if os.path.isdir(old) and not os.path.islink(old) else os.remove)(old)
