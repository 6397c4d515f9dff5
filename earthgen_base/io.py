"""Small file-output helpers shared by every package (re-exported by :mod:`earthgen.io`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from earthgen_base.errors import UserInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary keeps the suffix of ``path`` so libraries that pick a format from the
    extension (PIL, rasterio) still work. On error the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


# --- output paths (checked before any work: earthgen.commands, earthgen.inputs) -------------------


def _existing_parent(p: Path) -> Path:
    q = p.absolute()
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _check_writable(folder: Path, flag: str, path: Path) -> None:
    if not folder.is_dir():
        raise UserInputError(f"{flag} {path}: {folder} is not a folder")
    try:  # os.access says yes to root on /proc or a read-only mount: try it
        with tempfile.TemporaryFile(dir=folder, prefix=".earthgen-write-test-"):
            pass
    except OSError as e:
        raise UserInputError(
            f"{flag} {path}: cannot write in {folder} ({e.strerror or e})"
        ) from None


def check_output(
    path: str | os.PathLike,
    flag: str = "--out",
    exts: Iterable[str] | None = None,
    folder: bool = False,
    empty: bool = False,
) -> Path:
    """Check an output path before any work; UserInputError (one line) when it cannot be used.

    A file (``folder=False``): its extension (lower case) must be one of ``exts`` when given, it
    must not be a folder, and its nearest existing parent must be a folder we can write in (the
    missing folders are created later). A folder (``folder=True``): not an existing file, new or
    empty with ``empty``, in a writable place. Writes nothing but a removed probe file."""
    p = Path(path)
    if not str(path).strip():
        raise UserInputError(f"{flag}: empty path")
    if folder:
        if p.exists() and not p.is_dir():
            raise UserInputError(f"{flag} {p} exists and is not a folder")
        if empty and p.is_dir() and any(p.iterdir()):
            raise UserInputError(f"{flag} {p} is not an empty folder; give a new or empty one")
        _check_writable(_existing_parent(p), flag, p)
        return p
    if exts is not None:
        allowed = tuple(e.lower() for e in exts)
        if p.suffix.lower() not in allowed:
            got = f"extension '{p.suffix}'" if p.suffix else "no extension"
            raise UserInputError(
                f"{flag} {p}: {got} is not supported; this command writes {' or '.join(allowed)}"
            )
    if p.is_dir():
        raise UserInputError(f"{flag} {p} is a folder; give a file name")
    _check_writable(_existing_parent(p.parent), flag, p)
    return p
