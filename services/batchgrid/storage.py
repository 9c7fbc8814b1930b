"""Storage access through fsspec, confined to the configured roots.

Every path a job names, on the producer and again on the worker, goes through
:func:`confine` first, so a message forged on the broker cannot reach outside
the roots either.
"""

import contextlib
import os
import posixpath
import socket
import tempfile
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from batchgrid.errors import ConfigError, InputError, PathOutsideRootsError

__all__ = [
    "confine",
    "filesystem",
    "pid_alive",
    "read_range",
    "remove_orphans",
    "write_atomic",
]

#: URL schemes batchgrid accepts; anything else is refused before it is opened.
SUPPORTED_SCHEMES = frozenset({"file", "local", "s3", "s3a", "gs", "gcs", "memory"})


def _split_scheme(url: str) -> tuple[str, str]:
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return scheme.lower(), rest
    return "file", url


def _normalize(url: str) -> str:
    scheme, rest = _split_scheme(url)
    if scheme in ("file", "local"):
        return os.path.realpath(os.path.expanduser(rest))
    return f"{scheme}://{posixpath.normpath(rest)}"


def confine(url: str, roots: Sequence[str]) -> str:
    """Return ``url`` normalized, if it lies under one of ``roots``.

    Example: ``confine("data/../data/x.csv", ["/srv/data"])`` with the working
    directory ``/srv`` returns ``"/srv/data/x.csv"``; ``"/etc/passwd"`` raises.
    """
    if "\x00" in url:
        raise InputError(f"{url!r}: a path cannot contain a NUL character")
    if "::" in url or ("://" in url and any(c in url for c in "?#")):
        # fsspec would read these as chained filesystems or URL parameters.
        raise InputError(f"{url!r}: '::', '?' and '#' are not allowed in storage URLs")
    scheme, rest = _split_scheme(url)
    if scheme not in SUPPORTED_SCHEMES:
        raise InputError(
            f"{url!r}: unsupported URL scheme {scheme!r}; "
            f"use one of {', '.join(sorted(SUPPORTED_SCHEMES))}"
        )
    if scheme not in ("file", "local") and ".." in rest.split("/"):
        raise PathOutsideRootsError(f"{url!r}: '..' is not allowed in storage URLs")
    normal = _normalize(url)
    for root in roots:
        normal_root = _normalize(root)
        if normal == normal_root or normal.startswith(normal_root.rstrip("/") + "/"):
            return normal
    raise PathOutsideRootsError(
        f"{url!r} is outside the storage roots ({', '.join(roots)}); move it under a "
        "root or add its folder to BATCHGRID_STORAGE_ROOTS"
    )


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path within it."""
    try:
        fs, path = url_to_fs(url)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"{url}: the {scheme}:// filesystem is not installed ({exc}); install "
            "batchgrid's extra for it, e.g. pip install 'batchgrid[s3]'"
        ) from exc
    return fs, path


def read_range(url: str, start: int, end: int) -> bytes:
    """Read bytes ``[start, end)`` of ``url``."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        handle.seek(start)
        data: bytes = handle.read(end - start)
    if len(data) != end - start:
        raise InputError(
            f"{url}: expected {end - start} bytes at offset {start}, got {len(data)}; "
            "the file changed while the job ran"
        )
    return data


def write_atomic(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so readers see the old file or the whole new one.

    Locally: a temporary file in the same folder, fsynced, then renamed over the
    target. Object stores make a single PUT atomic already.
    """
    fs, path = filesystem(url)
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(), suffix=".part")
    try:
        # mkstemp makes the file private (0600); outputs get the usual mode.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def remove_orphans(folder_url: str) -> int:
    """Remove temporary files that dead processes of this host left in a folder.

    A process killed between creating its temporary file and renaming it (SIGKILL,
    the OOM killer) leaves a ``.tmp-*.part`` file behind; a task delivered again
    calls this before writing. Files of live processes, or of other hosts, stay.
    Returns how many were removed.
    """
    fs, folder = filesystem(folder_url)
    if not _is_local(fs):
        return 0  # object stores write whole objects; nothing is left half-done
    host_prefix = f".tmp-{socket.gethostname()}~"
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(host_prefix) and entry.name.endswith(".part")):
            continue
        pid = entry.name[len(host_prefix) :].split("~", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove_quietly(entry.path)
            removed += 1
    return removed


def _temp_prefix() -> str:
    """Temporary files name their writer (host and pid) so orphans can be found."""
    return f".tmp-{socket.gethostname()}~{os.getpid()}~"


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine has that id (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once at import: os.umask can only be read by setting it.
_UMASK = _current_umask()


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
