"""What an offline W&B run has written: the history rows in its `.wandb` transaction logs.

A `.wandb` file is a LevelDB-style log (leveldb's doc/log_format.md: 32 KiB blocks; records of
crc32 | length u16 | type u8 | data in FULL / FIRST, MIDDLE..., LAST fragments; W&B's 7-byte
header ":W&B" + magic + version first) of W&B `Record` protobufs, the files `wandb sync` uploads.
W&B flushes it every few seconds, so after a crash it holds less than was logged: a resumed run
reads here what W&B really kept."""

from __future__ import annotations

import glob
import json
import os
import struct
import zlib
from typing import Iterator

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: str) -> Iterator:
    """The Record protobufs of one .wandb file, up to the first incomplete or corrupt one."""
    from wandb.proto import wandb_internal_pb2 as pb  # noqa: PLC0415 (optional dependency)

    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        return
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        if kind == 0 or len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            return  # the end of what was flushed
        pos += HEADER + length
        parts.append(chunk)
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            parts = []
            yield rec


def _segment_folders(wandb_dir: str, run_id: str) -> list[str]:
    """offline-run-<YYYYMMDD_HHMMSS>-<id>[-<n>] folders in start order (W&B adds -n to a second
    segment started within the same second)."""
    found = []
    for folder in glob.glob(os.path.join(wandb_dir, f"offline-run-*-{run_id}*")):
        stamp, _, rest = os.path.basename(folder)[len("offline-run-"):].partition("-")
        if rest == run_id or (rest.startswith(run_id + "-") and rest[len(run_id) + 1:].isdigit()):
            found.append(((stamp, int(rest[len(run_id) + 1:] or 0)), folder))
    return [folder for _, folder in sorted(found)]


def segments(wandb_dir: str, run_id: str) -> list[list[dict]]:
    """History rows ({"_step": ..., key: value}) of each offline segment of `run_id`, oldest first."""
    out = []
    for folder in _segment_folders(wandb_dir, run_id):
        rows = []
        for path in glob.glob(os.path.join(folder, "*.wandb")):
            for rec in records(path):
                if rec.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                 for item in rec.history.item})
        out.append(rows)
    return out


def last_step(wandb_dir: str, run_id: str) -> int:
    """The highest step an offline W&B run holds (0: none)."""
    return max((int(r.get("_step", 0)) for seg in segments(wandb_dir, run_id) for r in seg), default=0)
