"""Output directories that appear whole or not at all.

Everything is written into a hidden temporary directory beside the target and renamed into
place at the end, so an interrupted run never leaves a half-written model that looks complete,
and a previous output is only replaced once the new one is finished.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import TokenSurgeonError

# Errors that mean "the output location cannot take the output", not a bug: one line, exit code 2.
_WRITE_ERRORS = {errno.ENOSPC: "out of disk space", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


def _staging_prefix(out: Path, kind: str) -> str:
    """``.NAME.partial-PID-`` (or ``.old-``): the pid lets a later run tell a dead run's leftovers from a live run's."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are never in use: only one staging directory per run at a time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def clean_leftovers(out: Path) -> list[Path]:
    """Remove staging directories that killed runs left beside ``out``; returns what was removed.

    Only directories named exactly ``.NAME.partial-PID-XXXX`` or ``.NAME.old-PID-XXXX`` (NAME being
    ``out``'s name) whose PID is no longer running are touched. A run killed between retiring the
    previous output and renaming the new one into place left no ``out`` but the previous output inside
    ``.NAME.old-PID-XXXX/NAME``: that is put back first, so no finished output is ever lost.
    """
    out = Path(out).resolve()
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(partial|old)-(\d+)-[A-Za-z0-9_]+$")
    removed = []
    for entry in sorted(out.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or _pid_alive(int(match.group(2))):
            continue
        retired = entry / out.name
        if match.group(1) == "old" and retired.is_dir() and not out.exists():
            os.replace(retired, out)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _resolved(path: Path, role: str) -> Path:
    """``path`` with every symlink followed; a loop or an unencodable name is a user mistake."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on Python < 3.13
        raise TokenSurgeonError(f"{role} {path}: cannot resolve the path ({exc})") from exc


def check_output_path(out: Path, inputs: list[Path], *, force: bool) -> None:
    """Refuse an output that would overwrite work, land inside an input, or hold an input.

    ``inputs`` are every file and directory the job reads (models, texts, corpora): an OUT equal
    to one, inside one, or containing one is refused, since replacing OUT would delete it.

    Leftover staging directories of killed runs to the same ``out`` are cleaned up first.
    """
    out = _resolved(out, "output")
    for given in inputs:
        source = _resolved(given, "input")
        if out == source:
            raise TokenSurgeonError(f"output {out} is the input {given}; choose another -o")
        if source in out.parents:
            raise TokenSurgeonError(f"output {out} lies inside input {given}; choose another -o")
        if out in source.parents:  # replacing OUT would delete the input with it
            raise TokenSurgeonError(f"output {out} contains input {given}; choose another -o")
    if out.exists() and not out.is_dir():
        raise TokenSurgeonError(f"output {out} exists and is not a directory")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TokenSurgeonError(f"output {out}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TokenSurgeonError(f"output {out}: cannot write in {ancestor} (permission denied)")
    try:
        clean_leftovers(out)
        if out.is_dir() and any(out.iterdir()) and not force:
            raise TokenSurgeonError(f"output {out} exists and is not empty; pass --force to replace it")
    except OSError as exc:
        raise TokenSurgeonError(f"output {out}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block completes without error.

    The staging directory ``.NAME.partial-PID-XXXX`` lies beside ``out``; on any error (or a kill,
    cleaned up by the next run to the same ``out``, see clean_leftovers) ``out`` is left as it was.
    A previous ``out`` is swapped for the new one atomically where the OS can (Linux renameat2).
    """
    out = Path(out).resolve()
    staging: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(out)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out, "partial"), dir=out.parent))
    except OSError as exc:  # nothing of ours is involved yet: the location itself is unusable
        raise TokenSurgeonError(f"cannot create the output directory {out}: {exc.strerror or exc}"
                                f"{f' ({exc.filename})' if exc.filename else ''}") from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the output should look like any other directory
        yield staging
        if out.exists() and _exchange(staging, out):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous output
        elif out.exists():
            retired = Path(tempfile.mkdtemp(prefix=_staging_prefix(out, "old"), dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRORS:
            raise TokenSurgeonError(f"{_WRITE_ERRORS[exc.errno]} while writing {out}"
                                    f"{f' ({exc.filename})' if exc.filename else ''}; nothing was left behind"
                                    ) from exc
        raise
