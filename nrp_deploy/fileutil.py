"""File helpers shared by every layer (torch-free): content hashes, atomic and no-clobber writes,
per-user folders.

Outputs are written to a temporary file in the destination directory and moved into place only when
complete, so a crash, a signal or a full disk never leaves a half-written image, model or report under the
final name. A temporary file is named ``.<name>.<pid>-<random>.tmp`` (the name shortened so the whole fits
the file system's 255-byte limit); one left behind by a killed process is recognised by its dead pid and
removed by ``remove_stale_temporaries``.

Without ``overwrite`` the move is a hard link, which fails if the name exists at that moment, so a file
that appeared after the job started (another run, another user) is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

#: Longest file name (bytes) that Linux, macOS and Windows file systems accept.
NAME_MAX = 255
_TEMP_PATTERN = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.tmp$", re.DOTALL)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large engines do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary_name(target_name: str) -> str:
    """``.<name>.<pid>-<8 hex>.tmp``, with ``name`` cut (at a character boundary) to fit ``NAME_MAX``."""
    tail = f".{os.getpid()}-{secrets.token_hex(4)}.tmp"
    room = NAME_MAX - 1 - len(tail.encode())
    name = os.fsencode(target_name)[:room].decode("utf-8", errors="ignore") if room > 0 else ""
    while len(os.fsencode("." + name + tail)) > NAME_MAX:  # surrogate-escaped names: drop a char at a time
        name = name[:-1]
    return "." + name + tail


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; move it to ``path`` only on success.

    ``overwrite=False`` raises ``FileExistsError`` if ``path`` exists when the file is moved into place
    (checked atomically at that moment, not before), and the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = target.parent / _temporary_name(target.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            _move_no_clobber(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _move_no_clobber(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` unless that name exists; ``FileExistsError`` if it does."""
    try:
        os.link(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links here (FAT, some network file systems): claim the name exclusively, then replace
        # the empty claim; the name shows an empty file for that instant, never someone else's file.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(tmp, target)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files in ``directory`` that ``atomic_output`` left behind in a process that no
    longer runs (killed before it could clean up); returns what was removed. Files of live processes stay."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or _process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a pid we can ask about: keep its file
    return True


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_output(path) as fh:
        fh.write(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def user_cache_dir(name: str) -> Path:
    """A per-user folder under ``$XDG_CACHE_HOME/nrp_deploy`` (``~/.cache/nrp_deploy`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nrp_deploy" / name
