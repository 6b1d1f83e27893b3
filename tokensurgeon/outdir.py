"""Output directories that appear whole or not at all.

Everything is written into a hidden temporary directory beside the target and renamed into
place at the end, so an interrupted run never leaves a half-written model that looks complete,
and a previous output is only replaced once the new one is finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import TokenSurgeonError


def check_output_path(out: Path, inputs: list[Path], *, force: bool) -> None:
    """Refuse an output that would overwrite work or land inside an input."""
    out = Path(out).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if out == source or source in out.parents:
            raise TokenSurgeonError(f"output {out} lies inside input {source}; choose another -o")
    if out.exists() and not out.is_dir():
        raise TokenSurgeonError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TokenSurgeonError(f"output {out} exists and is not empty; pass --force to replace it")


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block completes without error."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the output should look like any other directory
    try:
        yield staging
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / out.name)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
            raise TokenSurgeonError(f"out of disk space while writing {out}; nothing was left behind") from exc
        raise
