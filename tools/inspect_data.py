"""Show what the data pipeline feeds the model.

    python -m tools.inspect_data --config CFG [key=value ...] [--n N] [--json] [--split train|eval]

Human mode: the first N examples (before packing) as decoded text with the supervised spans
highlighted (green on a terminal, [[...]] otherwise; images as <image xN>), then the first N packed
rows with their segment and image boundaries. --json: one JSON object per example
({"type": "example", "id", "tokens" (each image as its N placeholder ids), "loss_mask" (0/1: the
token is a supervised label)}), then one per packed row ({"type": "row", "tokens", "loss_mask"
(0/1, shifted: the *next* token is supervised), "segment_ids", "positions", "num_images"}).
Skipped examples appear as {"type": "skipped", "reason", "message"}; the last line is the loader's
stats.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _spans(tokens, mask, image_token_id):
    """Split into runs of (kind, ids): kind = image | label | prompt."""
    kinds = np.where(tokens == image_token_id, 0, np.where(mask, 1, 2))
    out, start = [], 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or kinds[i] != kinds[start]:
            out.append((("image", "label", "prompt")[kinds[start]], tokens[start:i]))
            start = i
    return out


def render(tokens, mask, tok, image_token_id, n_img, color: bool) -> str:
    parts = []
    for kind, ids in _spans(np.asarray(tokens), np.asarray(mask, bool), image_token_id):
        if kind == "image":
            parts += [f"<image x{n_img}>"] * (len(ids) // n_img) + (["<image?>"] if len(ids) % n_img else [])
            continue
        text = tok.decode([int(i) for i in ids], skip_special_tokens=False)
        if kind == "label":
            text = f"\033[32m{text}\033[0m" if color else f"[[{text}]]"
        parts.append(text)
    return "".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.inspect_data", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML (the data: and model: sections are used)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.seq_len=1024")
    p.add_argument("--n", type=int, default=4, help="examples and packed rows to show (default 4)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.add_argument("--split", default="train", choices=["train", "eval"])
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")

    from vlm_jax.config import Config, ConfigError, load  # noqa: PLC0415
    from vlm_jax.data.errors import DataError, SourceError  # noqa: PLC0415
    from vlm_jax.data.pipeline import make_loader  # noqa: PLC0415
    from vlm_jax.tokenizer import load_tokenizer  # noqa: PLC0415

    try:
        cfg = load(Config, args.config, args.overrides)
    except ConfigError as e:
        p.error(str(e))
    try:
        tok = load_tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer else None
        if tok is None:
            raise SourceError("data.tokenizer is not set")
        loader = make_loader(cfg, batch_size=1, split=args.split, tokenizer=tok, process_index=0, process_count=1)
    except (SourceError, OSError) as e:  # nothing to inspect: bad usage
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_img, image_id = loader.spec.tokens_per_image, loader.spec.image_token_id
    color = sys.stdout.isatty()
    out = sys.stdout

    shown, i = 0, 0
    while shown < args.n:
        try:
            el = loader.examples[i]
        except IndexError:
            break
        i += 1
        if "skip" in el:
            if args.json:
                print(json.dumps({"type": "skipped", "reason": el["skip"], "message": el["message"]}), file=out)
            else:
                print(f"--- skipped: {el['message']}", file=out)
            continue
        shown += 1
        if args.json:
            print(json.dumps({"type": "example", "id": el["id"], "tokens": el["tokens"].tolist(),
                              "loss_mask": el["label_mask"].astype(int).tolist()}, ensure_ascii=False), file=out)
        else:
            extra = " (truncated)" if el["truncated"] else ""
            print(f"=== example {el['id']!r}: {len(el['tokens'])} tokens, {len(el['images'])} images{extra}", file=out)
            print(render(el["tokens"], el["label_mask"], tok, image_id, n_img, color), file=out)

    for r in range(args.n):
        try:
            row = loader.next_row()
        except StopIteration:
            break
        except DataError as e:  # strict mode, or nothing usable
            print(f"error: {e}", file=sys.stderr)
            return 1
        seg = row["segment_ids"]
        n_images = int(row["image_mask"].sum())
        if args.json:
            print(json.dumps({"type": "row", "tokens": row["tokens"].tolist(),
                              "loss_mask": row["loss_mask"].astype(int).tolist(), "segment_ids": seg.tolist(),
                              "positions": row["positions"].tolist(), "num_images": n_images}), file=out)
            continue
        used = int((seg > 0).sum())
        print(f"=== packed row {r}: {seg.max()} segments, {used}/{len(seg)} tokens, "
              f"{n_images}/{len(row['image_mask'])} images", file=out)
        img = 0
        for s in range(1, int(seg.max()) + 1):
            idx = np.flatnonzero(seg == s)
            toks = row["tokens"][idx]
            k = int((toks == image_id).sum()) // n_img
            # label of token j is loss_mask[j-1] (the row's loss_mask is shifted)
            labels = np.concatenate([[False], row["loss_mask"][idx][:-1]])
            img_txt = f", images {img}..{img + k - 1}" if k else ""
            print(f"--- segment {s}: positions 0..{len(idx) - 1} at [{idx[0]}, {idx[-1] + 1}){img_txt}", file=out)
            print(render(toks, labels, tok, image_id, n_img, color), file=out)
            img += k
    print(json.dumps({"type": "stats", **loader.stats()}) if args.json else f"stats: {loader.stats()}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
