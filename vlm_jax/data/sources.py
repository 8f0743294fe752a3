"""Random-access record sources: LLaVA JSON lists, JSONL files, ArrayRecord shards and TFDS datasets.

A source returns *raw* records (`RawRecord`); parsing and validation happen later, in the
pipeline's worker threads, so that one bad record is skipped and counted instead of failing the
whole file at open time. ArrayRecord records embed their image bytes (see `encode_record`).
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import json
import os
import struct
from typing import Any, Optional, Sequence

import numpy as np

from vlm_jax.config import DataSourceConfig
from vlm_jax.data.errors import SkipExample, SourceError
from vlm_jax.data import interleaved

_MAGIC = b"VLMR"


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """The payload of a record its file could not give back (a chunk failing its checksum)."""

    detail: str


@dataclasses.dataclass
class RawRecord:
    file: str  # where the record lives (for error messages)
    row: int  # its index inside that file
    payload: Any  # dict (JSON list), bytes (JSONL line / ArrayRecord record)
    image_folder: str = ""
    source: str = ""  # source name (mixture component)
    caption_sequences: bool = False  # DataSourceConfig.caption_sequences


@dataclasses.dataclass
class Record:
    """A parsed record: conversations plus either image paths or embedded image bytes."""

    id: Any
    conversations: list
    image_paths: list[str]
    image_bytes: Optional[list[bytes]] = None  # set for ArrayRecord records
    fields: dict = dataclasses.field(default_factory=dict)  # the whole record (e.g. AlignGPT's `similarity`)


# ----------------------------------------------------------------------------- record codec


def encode_record(record: dict, images: Sequence[bytes]) -> bytes:
    """`VLMR` | u32 header length | JSON header | image bytes, back to back."""
    header = {k: v for k, v in record.items() if k != "image"}
    header["image_sizes"] = [len(b) for b in images]
    try:
        blob = json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate in a field no parser looked at
        raise SkipExample("bad_text", f"{e.reason} in the record's fields") from None
    return b"".join([_MAGIC, struct.pack("<I", len(blob)), blob, *images])


def decode_record(data: bytes) -> tuple[dict, list[bytes]]:
    if data[:4] != _MAGIC or len(data) < 8:
        raise SkipExample("malformed_record", "not a vlm_jax ArrayRecord record")
    (n,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SkipExample("malformed_record", f"bad header: {e}") from None
    if not isinstance(header, dict):
        raise SkipExample("malformed_record", "header is not an object")
    sizes = header.pop("image_sizes", [])
    images, off = [], 8 + n
    for s in sizes:
        images.append(bytes(data[off : off + s]))
        off += s
    if off != len(data):
        raise SkipExample("malformed_record", "image bytes truncated")
    return header, images


def check_text(texts: Sequence[str], where: str) -> None:
    """SkipExample('bad_text') if a string is not Unicode text (a lone surrogate: valid JSON, but no
    tokenizer or UTF-8 writer takes it)."""
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise SkipExample("bad_text", f"{where} {i}: {t[e.start:e.end]!r} at position {e.start}: {e.reason}") from None


def _check_text_of(payload: dict, texts: Sequence[str], where: str) -> None:
    try:
        check_text(texts, where)
    except SkipExample as e:
        e.record_id = payload.get("id")
        raise


def parse_record(raw: RawRecord) -> Record:
    """RawRecord -> Record, raising SkipExample('malformed_record') on structural problems."""
    embedded = None
    payload = raw.payload
    if isinstance(payload, Unreadable):
        raise SkipExample("corrupt_record", payload.detail)
    if isinstance(payload, (bytes, bytearray)):
        if payload[:4] == _MAGIC:
            payload, embedded = decode_record(bytes(payload))
        else:
            try:
                payload = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SkipExample("malformed_record", f"invalid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise SkipExample("malformed_record", f"expected an object, got {type(payload).__name__}")
    if interleaved.is_document(payload):  # MMC4-style document: `conversations` holds an interleaved.Document
        doc, names, embedded = interleaved.as_record_fields(payload, embedded)
        _check_text_of(payload, doc.sentences, "sentence")
        if raw.caption_sequences:
            doc = interleaved.as_captions(doc)
        return Record(payload.get("id"), doc, names, embedded)
    conv = payload.get("conversations")
    if not isinstance(conv, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
        for t in conv
    ):
        raise SkipExample("malformed_record", "'conversations' must be a list of {from, value}")
    _check_text_of(payload, [t["value"] for t in conv], "turn")
    image = payload.get("image")
    if embedded is not None:
        paths = list(payload.get("image_names", [""] * len(embedded)))
    elif image is None:
        paths = []
    elif isinstance(image, str):
        paths = [image]
    elif isinstance(image, list) and all(isinstance(p, str) for p in image):
        paths = list(image)
    else:
        raise SkipExample("malformed_record", "'image' must be a string or a list of strings")
    return Record(payload.get("id"), conv, paths, embedded, payload)


# ----------------------------------------------------------------------------- sources


class LlavaJsonSource:
    """A JSON list of LLaVA records, loaded into memory (as LLaVA itself does)."""

    def __init__(self, path: str, image_folder: str = "", name: str = ""):
        try:
            with open(path, encoding="utf-8") as f:
                self._records = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(f"{path}: cannot read LLaVA JSON: {e}") from None
        if not isinstance(self._records, list):
            raise SourceError(f"{path}: LLaVA JSON must be a list of records")
        self.path, self.image_folder, self.name = path, image_folder, name

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> RawRecord:
        return RawRecord(self.path, i, self._records[i], self.image_folder, self.name)


class JsonlSource:
    """One record per line; lines are indexed by byte offset and read on demand (thread-safe)."""

    def __init__(self, path: str, image_folder: str = "", name: str = ""):
        starts, ends, pos = [], [], 0
        try:
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        starts.append(pos)
                        ends.append(pos + len(line))
                    pos += len(line)
        except OSError as e:
            raise SourceError(f"{path}: cannot read JSONL: {e}") from None
        self._starts = np.asarray(starts, np.int64)
        self._ends = np.asarray(ends, np.int64)
        self.path, self.image_folder, self.name = path, image_folder, name
        self._fd: Optional[int] = None

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> RawRecord:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        s, e = int(self._starts[i]), int(self._ends[i])
        return RawRecord(self.path, i, os.pread(self._fd, e - s, s), self.image_folder, self.name)

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}


class ArrayRecordSource:
    """ArrayRecord shards written by `tools.prepare_data` (image bytes embedded)."""

    def __init__(self, paths: Sequence[str], name: str = ""):
        import grain  # noqa: PLC0415 (heavy import, only when used)
        from array_record.python.array_record_module import ArrayRecordReader  # noqa: PLC0415

        if not paths:
            raise SourceError("ArrayRecord source has no files")
        counts = []
        for p in paths:
            try:
                r = ArrayRecordReader(p)
                counts.append(r.num_records())
                r.close()
            except RuntimeError as e:  # riegeli checks every block: a damaged index or footer
                raise SourceError(f"{p}: corrupt ArrayRecord file ({_first_line(e)}); rewrite it with "
                                  "tools.prepare_data") from None
        self._cum = np.cumsum([0] + counts)
        self._paths, self.name = list(paths), name
        self._ds = grain.sources.ArrayRecordDataSource(self._paths)

    def __len__(self) -> int:
        return int(self._cum[-1])

    def __getitem__(self, i: int) -> RawRecord:
        f = bisect.bisect_right(self._cum, i) - 1
        try:
            payload = self._ds[i]
        except RuntimeError as e:  # the record's chunk fails its hash: skip (and count) just this record
            payload = Unreadable(_first_line(e))
        return RawRecord(self._paths[f], i - int(self._cum[f]), payload, "", self.name)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class TfdsSource:
    """A TFDS dataset prepared as ArrayRecord, read by index (see tfds_source); images embedded."""

    def __init__(self, name: str, split: str, data_dir: str = "", label: str = ""):
        from vlm_jax.data import tfds_source  # noqa: PLC0415 (imports TFDS, only when used)

        self._ds, self.where = tfds_source.open_data_source(name, split, data_dir)
        self._to_llava = tfds_source.to_llava
        self.name = label

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> RawRecord:
        record, images = self._to_llava(self._ds[i])
        return RawRecord(self.where, i, encode_record(record, images), "", self.name)


def _detect_format(path: str) -> str:
    if os.path.isdir(path) or ".array_record" in path:
        return "array_record"
    if path.endswith(".jsonl"):
        return "jsonl"
    if path.endswith(".json"):
        return "llava_json"
    raise SourceError(f"{path}: cannot tell the format from the name; set format:")


def open_source(cfg: DataSourceConfig):
    """DataSourceConfig -> a random-access source of RawRecords (len / getitem)."""
    if not cfg.path:
        raise SourceError("data source without a path")
    fmt = _detect_format(cfg.path) if cfg.format == "auto" else cfg.format
    name = cfg.name or os.path.splitext(os.path.basename(cfg.path.rstrip("/")))[0]
    if fmt == "tfds":
        return TfdsSource(cfg.path, cfg.split, cfg.data_dir, cfg.name or cfg.path.split(":")[0])
    if fmt == "array_record":
        if os.path.isdir(cfg.path):
            paths = sorted(glob.glob(os.path.join(cfg.path, "*.array_record*")))
        else:
            paths = sorted(glob.glob(cfg.path))
        if not paths:
            raise SourceError(f"{cfg.path}: no ArrayRecord files found")
        src = ArrayRecordSource(paths, name)
    elif fmt in ("llava_json", "jsonl"):
        if not os.path.isfile(cfg.path):
            raise SourceError(f"{cfg.path}: data file not found")
        cls = LlavaJsonSource if fmt == "llava_json" else JsonlSource
        src = cls(cfg.path, cfg.image_folder, name)
    else:
        raise SourceError(f"{cfg.path}: unknown data format {fmt!r} (llava_json | jsonl | array_record | tfds)")
    return _CaptionSequences(src) if cfg.caption_sequences else src


class _CaptionSequences:
    """A source whose records are read with caption_sequences (interleaved.as_captions)."""

    def __init__(self, src):
        self._src = src

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> RawRecord:
        return dataclasses.replace(self._src[i], caption_sequences=True)
