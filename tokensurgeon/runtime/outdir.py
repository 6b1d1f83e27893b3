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
    lock_file = _lock_path(out)
    if lock_file.is_file() and not lock_file.is_symlink() and _stale_lock(lock_file):
        removed.append(lock_file)  # a killed run's lock: nobody holds it
    return removed


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _stale_lock(lock_file: Path) -> bool:
    """Remove ``lock_file`` if no run holds it (flock is per open file: our own held lock counts as held)."""
    import fcntl

    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        with contextlib.suppress(OSError):
            lock_file.unlink()
        return True


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


_EXPECTED: dict[Path, bool] = {}  # OUT -> whether it held an output when check_output_path looked


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_free_space(out: Path, needed: int) -> None:
    """Refuse before writing when the file system holding OUT has less free space than the output needs."""
    ancestor = Path(out).resolve()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        free = shutil.disk_usage(ancestor).free
    except OSError:
        return
    if needed > free:
        raise TokenSurgeonError(f"output {out} needs about {needed / 1e9:.2f} GB but {ancestor} has "
                                f"{free / 1e9:.2f} GB free; nothing was written")


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """An exclusive lock on OUT for the whole run (.NAME.lock beside it): two runs to one OUT cannot both
    write it; the second is refused at once."""
    import fcntl

    lock_file = _lock_path(out)
    while True:
        handle = open(lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise TokenSurgeonError(f"output {out}: another tokensurgeon run is writing it now; wait for it or "
                                    "choose another -o") from exc
        try:  # a stale lock removed (clean_leftovers) between our open and flock: lock the new file instead
            if os.fstat(handle.fileno()).st_ino == os.stat(lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_file.unlink()
        handle.close()


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise SystemExit while the output is staged, so the staging directory is
    removed like on any error; the previous handlers come back afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_output_path(out: Path, inputs: list[Path], *, force: bool) -> None:
    """Refuse an output that would overwrite work, land inside an input, or hold an input.

    ``inputs`` are every file and directory the job reads (models, texts, corpora): an OUT equal
    to one, inside one, or containing one is refused, since replacing OUT would delete it.

    Leftover staging directories of killed runs to the same ``out`` are cleaned up first.
    """
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenSurgeonError(f"output {os.fsencode(out)!r} is not a valid UTF-8 path; choose another -o") from exc
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
    if _read_only_fs(ancestor):
        raise TokenSurgeonError(f"output {out}: {ancestor} is on a read-only file system")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TokenSurgeonError(f"output {out}: cannot write in {ancestor} (permission denied)")
    try:
        clean_leftovers(out)
        if out.is_dir() and any(out.iterdir()) and not force:
            raise TokenSurgeonError(f"output {out} exists and is not empty; pass --force to replace it")
        if out.is_dir() and force:
            for folder in [out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink())]:
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise TokenSurgeonError(f"output {out}: --force cannot remove the old output, {folder} is "
                                            "read-only; make it writable or choose another -o")
        _EXPECTED[out] = out.is_dir() and any(out.iterdir())
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
    stack = contextlib.ExitStack()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stack.enter_context(_lock(out))
        clean_leftovers(out)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out, "partial"), dir=out.parent))
    except OSError as exc:  # nothing of ours is involved yet: the location itself is unusable
        stack.close()
        raise TokenSurgeonError(f"cannot create the output directory {out}: {exc.strerror or exc}"
                                f"{f' ({exc.filename})' if exc.filename else ''}") from exc
    try:
        stack.enter_context(_terminate_as_exit())
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the output should look like any other directory
        yield staging
        if out in _EXPECTED and not _EXPECTED.pop(out) and out.is_dir() and any(out.iterdir()):
            raise TokenSurgeonError(f"output {out} was written by another run meanwhile; not replaced "
                                    "(pass --force to replace it)")
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
            # name the file being written (copyfile's exception names its source first), never an input
            written = [name for name in (exc.filename2, exc.filename) if name and staging is not None
                       and str(staging) in str(name)]
            where = f" ({Path(written[0]).name})" if written else ""
            raise TokenSurgeonError(f"{_WRITE_ERRORS[exc.errno]} while writing {out}{where}; nothing was left "
                                    "behind") from exc
        raise
    finally:
        stack.close()
