"""Sample from a model: python -m infer.sample --checkpoint CKPT --image cat.jpg --prompt "What is this?"

One prompt streams its answer to the terminal as it is generated; `--prompts FILE.jsonl` runs a
batch (one JSON object a line: `prompt` (or `text`), optional `image` / `images`). `--json` prints
one object per prompt instead: {"prompt_token_ids", "token_ids", "text"} (prompt ids with every image
as its placeholder ids; generated ids with the stop token, as HF generate returns them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional

from infer import options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_model_options(p)
    p.add_argument("--image", action="append", default=[], help="image file (repeatable; in <image> tag order)")
    p.add_argument("--prompt", help="the question")
    p.add_argument("--prompts", help="JSONL file: {\"prompt\": ..., \"image\": PATH | \"images\": [PATH, ...]} per line")
    p.add_argument("--image-folder", default="", help="image paths in --prompts are relative to this")
    options.add_decoding_options(p, max_new_tokens=256)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call with --prompts")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt, no streaming")
    return p


def _read_prompts(args, parser) -> list[tuple[str, list[str]]]:
    if args.prompts:
        if not os.path.isfile(args.prompts):
            parser.error(f"--prompts {args.prompts}: no such file")
        out = []
        with open(args.prompts, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    text = rec.get("prompt", rec.get("text"))
                    assert isinstance(text, str)
                except (ValueError, AssertionError, AttributeError):
                    parser.error(f"{args.prompts}:{n}: expected a JSON object with a string 'prompt'")
                ims = rec.get("images") or ([rec["image"]] if rec.get("image") else [])
                out.append((text, [os.path.join(args.image_folder, i) for i in ims]))
        if not out:
            parser.error(f"{args.prompts} holds no prompts")
        return out
    if args.prompt is None:
        parser.error("give --prompt TEXT or --prompts FILE.jsonl")
    return [(args.prompt, list(args.image))]


def _check(args, parser, prompts):
    if args.prompt is not None and args.prompts:
        parser.error("--prompt and --prompts are exclusive")
    options.check(args, parser)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    for _, ims in prompts:
        for path in ims:
            if not os.path.isfile(path):
                parser.error(f"image {path}: no such file")


class _Streamer:
    """Prints the growing answer of row 0 (runner.TextStream holds back what may still change)."""

    def __init__(self, m, template):
        from infer import runner

        self.text = runner.TextStream(m, template)

    def __call__(self, row: int, ids: list) -> None:
        if row == 0:
            sys.stdout.write(self.text.update(ids))
            sys.stdout.flush()

    def finish(self, ids: list) -> None:
        sys.stdout.write(self.text.finish(ids))
        print(flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prompts = _read_prompts(args, parser)
    _check(args, parser, prompts)

    from tqdm import tqdm

    from infer import runner

    m, template, sc = options.load(args)
    prepared = []  # (text, row or None, error or None)
    for text, ims in prompts:
        try:
            prepared.append((text, runner.prepare(m, template, text, ims), None))
        except runner.BadPrompt as e:
            if len(prompts) == 1:
                options.fail(str(e))
            prepared.append((text, None, str(e)))

    if len(prompts) == 1 and not args.json:
        row = prepared[0][1]
        room = runner.room(m, row[0])
        streamer = _Streamer(m, template)
        out = runner.run(m, template, [row], dataclasses.replace(sc, max_new_tokens=min(sc.max_new_tokens, room)),
                         args.seed, stream=lambda i, ids: streamer(i, ids))
        streamer.finish(out[0])
        if len(out[0]) == room < sc.max_new_tokens:
            _warn_cut(m, 1, args)
        return 0
    rows_per_batch = min(args.batch_size, sum(row is not None for _, row, _ in prepared)) or 1
    failed, cut = [], 0
    bar = tqdm(total=len(prepared), desc="generate", unit="prompt", file=sys.stderr,
               disable=len(prepared) <= args.batch_size)
    for start in range(0, len(prepared), args.batch_size):
        part = prepared[start : start + args.batch_size]
        ok = [row for _, row, _ in part if row is not None]
        outs = iter(runner.run(m, template, ok, sc, args.seed + start, num_rows=rows_per_batch) if ok else [])
        for text, row, error in part:
            if error is not None:
                failed.append(error)
                print(json.dumps({"prompt": text, "error": error}, ensure_ascii=False) if args.json
                      else f"### {text}\nerror: {error}\n", flush=True)
                continue
            gen_ids = next(outs)
            cut += len(gen_ids) == runner.room(m, row[0]) < sc.max_new_tokens
            answer = runner.decode_text(m, template, gen_ids)
            if args.json:
                print(json.dumps({"prompt_token_ids": [int(t) for t in row[0]], "token_ids": gen_ids, "text": answer},
                                 ensure_ascii=False), flush=True)
            else:
                print(f"### {text}\n{answer}\n", flush=True)
        bar.update(len(part))
    bar.close()
    if cut:
        _warn_cut(m, cut, args)
    if failed:
        print(f"error: {len(failed)} of {len(prepared)} prompts failed, e.g. {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _warn_cut(m, n: int, args) -> None:
    from infer import runner

    print(f"warning: {n} answer{'s' * (n > 1)} cut at the model's context of {runner.context_length(m)} tokens "
          f"(prompt + --max-new-tokens {args.max_new_tokens} is longer)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
