"""Atomic file output: write to a temporary file beside the target, then rename.

A reader never sees a half-written file, and an interrupted run leaves the old file (or
nothing) in place, never a truncated one. :func:`output_set` does the same for several
files at once: all of a result's files replace the old ones, or none does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` atomically.

    The temporary file lives in the target's folder (so the rename stays on one file
    system) and is removed if the body raises. A target that is itself a temporary of an
    :class:`OutputSet` is yielded as it is: the set moves it into place with the others.
    """
    target = Path(target)
    with _PENDING_LOCK:
        pending = target in _PENDING
    if pending:  # a temporary of an output set: the set renames it, or removes it
        yield target
        return
    try:
        tmp = _temporary_beside(target)
    except OSError as error:
        _name_target(error, target, None)
        raise
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _name_target(error, target, tmp)
        raise


def _name_target(error: BaseException, target: Path, tmp: Path | None) -> None:
    """Make an OSError about the temporary (or about no file) name the target the caller knows."""
    if isinstance(error, OSError) and error.errno and error.filename in (None, str(tmp)):
        error.filename = str(target)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``target`` when the block ends.

    Parameters
    ----------
    target
        The final path.
    mode
        ``"w"`` (text) or ``"wb"`` (binary).
    **kwargs
        Passed to :func:`open` (e.g. ``encoding``).
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only; got mode {mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


# The temporaries of the output sets being written in this process: a writer that is handed one
# (they all write through atomic_path) writes it in place, since it is a temporary already.
_PENDING: set[Path] = set()
_PENDING_LOCK = threading.Lock()


def _temporary_beside(target: Path) -> Path:
    """A new empty file ``.<target name>.<8 random>.part`` in the target's folder, usual permissions."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    return Path(tmp_name)


class OutputError(OSError):
    """A file of an output set could not be written; the message names the set and the file."""

    def __init__(self, message: str, *, errno_code: int | None, path: Path) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno_code
        self.filename = str(path)

    def __str__(self) -> str:
        return self.message  # OSError's own would print "[Errno 28] None: <file>"


def _cause_errno(error: BaseException) -> int | None:
    """The errno of ``error`` or of the OSError it was raised from (a library may wrap a full disk)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        error = error.__cause__
    return None


_PLAIN_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class OutputSet:
    """The files of one result, written as one: each to a temporary beside its target, all moved
    into place only when every one was written.

    Use it through :func:`output_set`. Files are moved in the order they were added, so the one
    added last (a completion marker) appears last; before anything moves, the old files are
    set aside (the old marker first) and they come back if a move fails. A process killed in
    that instant leaves no marker (the set is unfinished, not mixed) and its set-aside files as
    temporaries, which :func:`napari_care.core.jobs.remove_partial_files` clears.

    Parameters
    ----------
    label
        What the files are of (a slide's name), for error messages.
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self._members: list[tuple[Path, Path]] = []  # (target, temporary)
        self._writing: Path | None = None

    def temporary(self, target: str | os.PathLike[str]) -> Path:
        """Add ``target`` to the set; return the temporary file to write it to (an empty file)."""
        target = Path(target)
        if any(target == known for known, _ in self._members):
            raise ValueError(f"{target} is already in this output set")
        self._writing = target
        tmp = _temporary_beside(target)
        with _PENDING_LOCK:
            _PENDING.add(tmp)
        self._members.append((target, tmp))
        return tmp

    @property
    def targets(self) -> list[Path]:
        """The files of the set, in the order they are moved into place."""
        return [target for target, _ in self._members]

    def error(self, error: BaseException, target: Path | None = None) -> BaseException:
        """``error`` as an :class:`OutputError` naming the file, or unchanged when it is no OSError."""
        target = target or self._writing
        code = _cause_errno(error)
        if target is None or (code is None and not isinstance(error, OSError)):
            return error
        prefix = f"{self.label}: " if self.label else ""
        if code in _PLAIN_REASONS:
            message = f"{prefix}{_PLAIN_REASONS[code]} while writing {target}"
        else:
            reason = getattr(error, "strerror", None) or " ".join(str(error).split())
            message = f"{prefix}cannot write {target}: {reason}"
        return OutputError(message, errno_code=code, path=target)

    def commit(self) -> list[Path]:
        """Move every temporary into place (see the class); return the targets."""
        for target, tmp in self._members:  # on disk before the old files go
            self._writing = target
            _fsync(tmp)
        aside: list[tuple[Path, Path]] = []  # (target, its old file set aside)
        placed: list[Path] = []
        try:
            for target, _ in reversed(self._members):  # the old marker first: nothing looks finished
                if os.path.lexists(target):
                    self._writing = target
                    backup = _spare_name(target)
                    os.replace(target, backup)
                    aside.append((target, backup))
            for target, tmp in self._members:
                self._writing = target
                os.replace(tmp, target)
                placed.append(target)
        except BaseException:
            for target in placed:
                with contextlib.suppress(OSError):
                    target.unlink()
            for target, backup in reversed(aside):  # the old marker last
                with contextlib.suppress(OSError):
                    os.replace(backup, target)
            raise
        for _, backup in aside:
            with contextlib.suppress(OSError):
                backup.unlink()
        _fsync_folders({target.parent for target in placed})
        self._forget()
        return [target for target, _ in self._members]

    def discard(self) -> None:
        """Remove the temporaries; the targets stay as they were."""
        for _, tmp in self._members:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._forget()

    def _forget(self) -> None:
        with _PENDING_LOCK:
            _PENDING.difference_update(tmp for _, tmp in self._members)


@contextlib.contextmanager
def output_set(label: str = "") -> Iterator[OutputSet]:
    """Write several files as one: all of them replace their targets when the block ends, or none.

    >>> with output_set("slide.svs") as files:  # doctest: +SKIP
    ...     save_features(files.temporary(out / "slide.features.h5"), features)
    ...     with atomic_open(files.temporary(out / "slide.care.json"), "w") as handle:
    ...         json.dump(summary, handle)

    Parameters
    ----------
    label
        What the files are of (a slide's name), for error messages.

    Yields
    ------
    OutputSet
        Ask it for each file's temporary (:meth:`OutputSet.temporary`); writers that go
        through :func:`atomic_path` write a temporary in place.

    Raises
    ------
    OutputError
        When writing or moving a file fails with an OSError (a full disk: "no space left on
        device while writing <file>"); the temporaries are removed and the old files kept.
        Other exceptions (Ctrl-C included) pass unchanged, with the same clean-up.
    """
    files = OutputSet(label)
    try:
        yield files
        files.commit()
    except BaseException as error:
        files.discard()
        converted = files.error(error) if isinstance(error, Exception) else error
        if converted is error:
            raise
        raise converted from error


def _spare_name(target: Path) -> Path:
    """A free name for setting ``target`` aside, in the temporaries' pattern (cleared after a kill)."""
    while True:
        spare = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        if not os.path.lexists(spare):
            return spare


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folders(folders: set[Path]) -> None:
    """Make the renames durable where the platform allows (not on Windows)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            _fsync(folder)
