"""Safe unpacking of dropped .zip/.tar/.tar.gz/.tgz archives into a job's work area, every member checked first."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 4 * 1024 * 1024 * 1024  # 4 GB unpacked in all


class ArchiveError(ValueError):
    """An archive that is refused or unreadable; the message names the bad member."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = MAX_MEMBERS
    max_bytes: int = MAX_UNPACKED_BYTES


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_relpath(archive: str, name: str) -> PurePosixPath | None:
    """The member's path inside the destination; ArchiveError for absolute paths and '..'; None for '.' entries."""
    if "\0" in name:
        raise ArchiveError(f"{archive}: member {name!r} has a NUL byte in its name")
    unixy = name.replace("\\", "/")
    if unixy.startswith("/") or (len(unixy) > 1 and unixy[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; archives must hold relative paths")
    parts = [p for p in PurePosixPath(unixy).parts if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {name!r} points outside the archive ('..'); refusing to unpack")
    return PurePosixPath(*parts) if parts else None


def _check_totals(archive: str, count: int, total: int, limits: ArchiveLimits, name: str) -> None:
    if count > limits.max_members:
        raise ArchiveError(f"{archive}: more than {limits.max_members} members (at {name!r}); refusing to unpack")
    if total > limits.max_bytes:
        raise ArchiveError(f"{archive}: unpacks to more than {limits.max_bytes} bytes (at member {name!r}); "
                           "refusing to unpack (a zip bomb?)")


def _unpack_zip(path: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path.name} is not a readable zip archive ({exc})") from None
    with zf:
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        total = 0
        for i, info in enumerate(zf.infolist(), 1):
            rel = _safe_relpath(path.name, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{path.name}: member {info.filename!r} is a symbolic link; links are not unpacked")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # 0: no type recorded
                raise ArchiveError(f"{path.name}: member {info.filename!r} is not a regular file or folder")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{path.name}: member {info.filename!r} is encrypted")
            total += info.file_size
            _check_totals(path.name, i, total, limits, info.filename)
            if rel is not None:
                plan.append((info, rel))
        return _write_members(path.name, [(info, rel, info.filename, info.is_dir(), info.file_size)
                                          for info, rel in plan], dest, zf.open,
                              (zipfile.BadZipFile, EOFError, NotImplementedError))


def _write_members(archive: str, plan: list[tuple[Any, PurePosixPath, str, bool, int]], dest: Path,
                   open_member: Callable[[Any], Any], read_errors: tuple[type[BaseException], ...]) -> list[Path]:
    """Write the checked members (member, relpath, name, is_dir, size) under dest; none past its stated size."""
    written: list[Path] = []
    for member, rel, name, is_dir, size in plan:
        target = dest / rel
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        budget = size
        try:
            src = open_member(member)
            with src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    budget -= len(chunk)
                    if budget < 0:  # the header lied about the size
                        raise ArchiveError(f"{archive}: member {name!r} unpacks to more bytes than its header "
                                           "says; refusing to unpack")
                    out.write(chunk)
        except FileExistsError:
            raise ArchiveError(f"{archive}: member {name!r} appears twice") from None
        except (*read_errors, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, read_errors) and exc.errno is not None:
                raise  # a real I/O error (no space left...), not a damaged archive
            raise ArchiveError(f"{archive}: member {name!r} cannot be read ({exc})") from None
        written.append(target)
    return written


def _unpack_tar(path: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{path.name} is not a readable tar archive ({exc})") from None
    with tf:
        plan: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
        total = 0
        try:
            for i, member in enumerate(tf, 1):
                rel = _safe_relpath(path.name, member.name)
                if member.issym() or member.islnk():
                    raise ArchiveError(f"{path.name}: member {member.name!r} is a link (to {member.linkname!r}); "
                                       "links are not unpacked")
                if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir()):
                    raise ArchiveError(f"{path.name}: member {member.name!r} is a device, pipe or other special file")
                total += member.size
                _check_totals(path.name, i, total, limits, member.name)
                if rel is not None:
                    plan.append((member, rel))
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(f"{path.name} is a damaged tar archive ({exc})") from None
        return _write_members(path.name, [(m, rel, m.name, m.isdir(), m.size) for m, rel in plan], dest,
                              tf.extractfile, (tarfile.TarError, EOFError))


def unpack_archive(path: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Unpack `path` into the (new, empty) folder `dest`; ArchiveError (nothing outside dest written) when refused.

    Every member is checked before anything is written: no absolute paths, no '..', no links, no devices/pipes,
    at most limits.max_members members and limits.max_bytes bytes; files are created with O_EXCL so nothing is
    written through a name that already exists.
    """
    if dest.exists():  # left by an earlier attempt of the same job (a retry, a toolkit handover): start afresh
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=False)
    try:
        if path.name.lower().endswith(".zip"):
            return _unpack_zip(path, dest, limits)
        return _unpack_tar(path, dest, limits)
    except ArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"{path.name}: cannot unpack ({exc.strerror or exc})") from None


def strip_single_folder(dest: Path) -> Path:
    """An archive holding one top folder (model/...) is read from that folder."""
    entries = [p for p in dest.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not os.path.islink(entries[0]):
        return entries[0]
    return dest
