"""Durable file I/O for the stores, in plain Python calls (HDF5 never writes to disk).

Two primitives, both safe when the disk fills up or the process is killed at any moment:

- `atomic_write(path, data)`: the bytes go to a temporary file in the same folder, are flushed
  to the disk (fsync), and replace `path` in one rename; the folder is then fsynced so the
  rename survives a power cut. Until the rename `path` is untouched; after it, it is complete.
  Readers that opened the old file keep reading the old (unchanged) file. On any failure the
  temporary file is removed. New files get mode 0666 minus the umask, like any other program's.
- `Journal`: an append-only file of framed records. A record is written, then fsynced; if any
  step fails the file is cut back to where it was, so a failed append leaves every earlier
  record as it was. Each record carries its lengths and a CRC-32 of its header and of its
  content, so `scan` tells a record cut short by a kill (only ever the last one) from damage.

Record layout (little-endian): magic ``XJ1\\n`` (4 bytes), header length (u32), body length
(u64), CRC-32 of header+body (u32), CRC-32 of the 20 bytes before it (u32); then the header
and the body.
"""

from __future__ import annotations

import os
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"XJ1\n"
_PREFIX = struct.Struct("<4sIQII")
_SYNC = getattr(os, "fdatasync", os.fsync)   # data and size, not timestamps: cheaper


def write_all(fd: int, data) -> None:
    """os.write until every byte is written (a write may be short near a full disk)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a regular file never returns 0 for a non-empty write
            raise OSError("write returned no progress")
        view = view[n:]


def fsync_folder(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable (POSIX; Windows has no folder handles)."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A hidden temporary file next to `path` (`.<name>.<random>.tmp`)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def stale_temps(path: Path) -> list[Path]:
    """Temporary files a killed writer of `path` may have left (see `temp_name`)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_write(path: Path, data) -> os.stat_result:
    """Replace `path` by `data` atomically and durably; return the new file's stat."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    st = os.stat(path)
    try:
        fsync_folder(path.parent)
    except OSError:  # the rename is done; only its durability across a power cut is unsure
        pass
    return st


@dataclass
class Record:
    offset: int
    header: bytes
    body: memoryview


@dataclass
class Scan:
    records: list[Record]
    end: int            # bytes of whole, valid records from the start
    problem: str = ""   # "" (clean), "torn" (last record cut short) or "damaged at byte N"


def _record_at(data: memoryview, o: int) -> Record | None:
    """The valid record starting at `o`, or None."""
    if len(data) - o < _PREFIX.size:
        return None
    prefix = bytes(data[o:o + _PREFIX.size])
    magic, hlen, blen, crc, pcrc = _PREFIX.unpack(prefix)
    if magic != MAGIC or zlib.crc32(prefix[:-4]) != pcrc:
        return None
    start = o + _PREFIX.size
    if start + hlen + blen > len(data):
        return None
    payload = data[start:start + hlen + blen]
    if zlib.crc32(payload) != crc:
        return None
    return Record(o, bytes(payload[:hlen]), payload[hlen:])


def scan(data: bytes) -> Scan:
    """Split journal bytes into records. A bad record with no valid record after it is a torn
    tail (an append killed half-way); one followed by a valid record is damage."""
    view = memoryview(data)
    records, o = [], 0
    while o < len(view):
        rec = _record_at(view, o)
        if rec is None:
            later = data.find(MAGIC, o + 1)
            while later >= 0:
                if _record_at(view, later) is not None:
                    return Scan(records, o, f"damaged at byte {o}")
                later = data.find(MAGIC, later + 1)
            return Scan(records, o, "torn")
        records.append(rec)
        o = rec.offset + _PREFIX.size + len(rec.header) + len(rec.body)
    return Scan(records, o)


class Journal:
    """Appends records to one journal file, durably, undoing any append that fails."""

    def __init__(self, path: Path, end: int):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        self.end = end
        self.ino = os.fstat(self.fd).st_ino

    def intact(self) -> bool:
        """Nobody else appended to, cut or replaced the journal since our last write."""
        try:
            return (os.fstat(self.fd).st_size == self.end
                    and os.stat(self.path).st_ino == self.ino)
        except OSError:
            return False

    def append(self, header: bytes, parts: list) -> None:
        """One record; on failure the journal is cut back and the OSError re-raised."""
        crc = zlib.crc32(header)
        blen = 0
        for p in parts:
            crc = zlib.crc32(p, crc)
            blen += memoryview(p).nbytes
        head = _PREFIX.pack(MAGIC, len(header), blen, crc, 0)
        prefix = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
        try:
            os.lseek(self.fd, self.end, os.SEEK_SET)
            write_all(self.fd, prefix + header)
            for p in parts:
                write_all(self.fd, p)
            _SYNC(self.fd)
        except BaseException:
            self.cut(self.end)
            raise
        self.end += len(prefix) + len(header) + blen

    def cut(self, size: int) -> None:
        """Truncate to `size` bytes and make it durable (best effort: a record past the
        recorded end is a torn tail to every reader anyway)."""
        try:
            os.ftruncate(self.fd, size)
            _SYNC(self.fd)
        except OSError:
            pass
        self.end = size

    def clear(self) -> None:
        """Empty the journal, durably, before anything else is appended (after a publish)."""
        os.ftruncate(self.fd, 0)
        os.fsync(self.fd)
        self.end = 0

    def close(self) -> None:
        os.close(self.fd)
