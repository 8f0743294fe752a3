"""Convert LLaVA JSON / JSONL + an image folder into ArrayRecord shards with the images embedded.

    python -m tools.prepare_data --src data.json --image-folder DIR --out DIR [--shards N]

Records whose images are missing, unreadable, too large or outside the image folder, and records whose
text is not Unicode, are skipped and counted (or, with --strict, stop the conversion with an error
naming the record). Image bytes are stored as they are on disk (no re-encoding); decoding happens at
training time.

The shards are written into a temporary sibling of --out that becomes --out only when the conversion
succeeds: a failed run leaves no shards, and a folder that already holds files is refused unless
--overwrite, which replaces it whole (a rerun with fewer shards leaves no old ones behind).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from tqdm import tqdm

from vlm_jax.config import DataSourceConfig
from vlm_jax.data import images as img_lib
from vlm_jax.data import interleaved
from vlm_jax.data.errors import DataError, SkipExample, SourceError, describe
from vlm_jax.data.examples import record_id
from vlm_jax.data.sources import encode_record, open_source, parse_record
from vlm_jax.output_folder import occupied, replacing


def convert(src: str, image_folder: str, out: str, shards: int, strict: bool = False,
            fmt: str = "auto", progress: bool = True, overwrite: bool = False,
            max_pixels: int = img_lib.DEFAULT_MAX_PIXELS) -> dict:
    """-> {"written", "skipped", "skipped_by_reason", "shards"}. FileExistsError if `out` holds files
    and not `overwrite`; DataError in strict mode (then `out` is as it was)."""
    why = occupied(out)
    if why and not overwrite:
        raise FileExistsError(f"--out {out} {why}; pass --overwrite to replace it whole")
    source = open_source(DataSourceConfig(path=src, image_folder=image_folder, format=fmt))
    stem = os.path.splitext(os.path.basename(src))[0]
    shards = max(1, min(shards, len(source)))
    names = [f"{stem}-{i:05d}-of-{shards:05d}.array_record" for i in range(shards)]
    with replacing(out) as tmp:
        result = _write_shards(source, image_folder, [os.path.join(tmp, n) for n in names], strict, progress,
                               max_pixels)
    return {**result, "shards": [os.path.join(out, n) for n in names]}


def _write_shards(source, image_folder: str, paths: list[str], strict: bool, progress: bool, max_pixels: int) -> dict:
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

    shards = len(paths)
    writers = [ArrayRecordWriter(p, "group_size:1") for p in paths]
    skipped: collections.Counter = collections.Counter()
    written = 0
    try:
        for i in tqdm(range(len(source)), desc="records", unit="rec", disable=not progress):
            raw = source[i]
            try:
                rec = parse_record(raw)
                blobs = [img_lib.read_file(image_folder, p) for p in rec.image_paths]
                for p, b in zip(rec.image_paths, blobs):
                    img_lib.decode(b, p, max_pixels)  # fail now rather than at training time
                if isinstance(rec.conversations, interleaved.Document):  # MMC4 document, images in document order
                    record = {"id": rec.id, **interleaved.to_mmc4(rec.conversations, rec.image_paths)}
                else:
                    record = {"id": rec.id, "conversations": rec.conversations, "image_names": rec.image_paths}
                encoded = encode_record(record, blobs)
            except SkipExample as e:
                if strict:
                    raise DataError(describe(raw.file, raw.row, record_id(raw), e.reason, e.detail)) from None
                skipped[e.reason] += 1
                continue
            writers[written % shards].write(encoded)
            written += 1
    finally:
        for w in writers:
            w.close()
    return {"written": written, "skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.prepare_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="LLaVA JSON list or JSONL file")
    p.add_argument("--image-folder", default="", help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="output folder for the .array_record shards")
    p.add_argument("--shards", type=int, default=8, help="number of shards (default 8)")
    p.add_argument("--format", default="auto", choices=["auto", "llava_json", "jsonl"])
    p.add_argument("--strict", action="store_true", help="stop at the first bad record (and write nothing)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder that already holds files")
    p.add_argument("--max-image-pixels", type=int, default=img_lib.DEFAULT_MAX_PIXELS,
                   help="skip images with more pixels (default %(default)s, PIL's decompression-bomb limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.shards < 1:
        p.error("--shards must be >= 1")
    if args.max_image_pixels < 1:
        p.error("--max-image-pixels must be >= 1")
    if not os.path.isfile(args.src):
        p.error(f"--src {args.src}: no such file")
    if args.image_folder and not os.path.isdir(args.image_folder):
        p.error(f"--image-folder {args.image_folder}: no such folder")
    try:
        result = convert(args.src, args.image_folder, args.out, args.shards, args.strict, args.format,
                         progress=not args.quiet, overwrite=args.overwrite, max_pixels=args.max_image_pixels)
    except (FileExistsError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if k != "shards"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
