"""Where a compiled step moves its bytes, from XLA's optimized HLO text (`--xla_dump_to` dumps).

    python -m bench.hlo_account [--seq L] [--layers-diff] FILE [FILE ...]

Sums, per kind of top-level HLO op (the ops XLA schedules: fusions, custom calls, collectives,
copies, in the entry computation and the loops it runs), the bytes each reads and writes (its
operands' and result's shapes); a loop body is counted once, as XLA's cost analysis does.
`--seq L` puts every op that touches a tensor with two dimensions of size L (attention scores) in
its own group. With two files and `--layers-diff`, the second minus the first (e.g. 2 unrolled
layers minus 1: one layer). A proxy of the cost model's `bytes accessed`, not its seconds.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
OPERAND = re.compile(r"%([\w.\-]+)")
SKIP = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
        "after-all", "partition-id", "replica-id", "opt-barrier"}


def shapes(text: str) -> list[tuple[str, list[int]]]:
    return [(t, [int(d) for d in dims.split(",") if d]) for t, dims in SHAPE.findall(text)]


def nbytes(shape_list) -> int:
    total = 0
    for t, dims in shape_list:
        n = DTYPE_BYTES[t]
        for d in dims:
            n *= d
        total += n
    return total


def _operand_text(rest: str) -> str:
    """The operand list: `rest` up to the parenthesis that closes the opcode's."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i]
    return rest


def parse(path: str) -> tuple[dict[str, list[dict]], set[str], dict[str, list]]:
    """Computations -> instructions (name, opcode, operand names, called computations), the names
    of fusion bodies and reducers (not scheduled on their own), and every value's result shapes
    (the optimized text names operands without their shapes)."""
    comps: dict[str, list[dict]] = {}
    inner: set[str] = set()
    shape_of: dict[str, list] = {}
    current = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = COMPUTATION.match(line) if not line.startswith(" ") else None  # headers start at column 0
            if m:
                current = m.group(2)
                comps[current] = []
                continue
            m = INSTRUCTION.match(line)
            if not m or current is None:
                continue
            _, name, result, opcode, rest = m.groups()
            calls = re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", rest)
            if opcode == "fusion" or "to_apply=" in rest:
                inner.update(calls)
            shape_of[name] = shapes(result)
            comps[current].append({"name": name, "op": opcode, "operands": OPERAND.findall(_operand_text(rest)),
                                   "calls": calls, "line": line})
    return comps, inner, shape_of


def _has_matmul(ins: dict, comps, seen=None) -> bool:
    if ins["op"] in ("dot", "convolution"):
        return True
    seen = set() if seen is None else seen
    for c in ins["calls"]:
        if c not in seen:
            seen.add(c)
            if any(_has_matmul(i, comps, seen) for i in comps.get(c, [])):
                return True
    return False


def kind(ins: dict, comps, shape_of, seq: int) -> str:
    op = ins["op"]
    if any(op.startswith(c) for c in COLLECTIVES):
        return "collectives (" + op.replace("-start", "").replace("-done", "") + ")"
    touched = shape_of.get(ins["name"], []) + [s for o in ins["operands"] for s in shape_of.get(o, [])]
    if seq and any(sum(1 for d in dims if d == seq) >= 2 for _, dims in touched):
        return f"attention scores (a [.., {seq}, {seq}] operand or result)"
    if op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', ins["line"])
        return "custom-call " + (target.group(1) if target else "?")
    if op in ("copy", "transpose", "copy-start"):
        return "copies / transposes"
    if _has_matmul(ins, comps):
        return "matmul fusions (dot / convolution)"
    return "other fusions (elementwise, reductions, dynamic slices)"


def account(path: str, seq: int = 0) -> dict[str, dict[str, float]]:
    comps, inner, shape_of = parse(path)
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"bytes": 0.0, "ops": 0})
    for name, instructions in comps.items():
        if name in inner:
            continue
        for ins in instructions:
            if ins["op"] in SKIP or ins["op"].endswith("-done") or ins["op"].endswith("-update"):
                continue
            k = kind(ins, comps, shape_of, seq)
            moved = nbytes(shape_of[ins["name"]]) + sum(nbytes(shape_of.get(o, [])) for o in ins["operands"])
            out[k]["bytes"] += moved
            out[k]["ops"] += 1
    return dict(out)


def table(columns: dict[str, dict[str, dict[str, float]]]) -> str:
    kinds = sorted({k for c in columns.values() for k in c})
    head = "| op kind | " + " | ".join(f"{n} GB | {n} ops" for n in columns) + " |"
    rows = [head, "|---|" + "---|---|" * len(columns)]
    for k in kinds + ["total"]:
        cells = []
        for c in columns.values():
            v = ({"bytes": sum(x["bytes"] for x in c.values()), "ops": sum(x["ops"] for x in c.values())}
                 if k == "total" else c.get(k, {"bytes": 0, "ops": 0}))
            cells.append(f"{v['bytes'] / 1e9:.2f} | {v['ops']:.0f}")
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def diff(a: dict, b: dict) -> dict:
    return {k: {f: b.get(k, {}).get(f, 0.0) - a.get(k, {}).get(f, 0.0) for f in ("bytes", "ops")}
            for k in set(a) | set(b)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hlo_account", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="*after_optimizations.txt dumps")
    p.add_argument("--seq", type=int, default=0, help="sequence length: group attention-score ops")
    p.add_argument("--layers-diff", action="store_true", help="two files: print the second minus the first")
    args = p.parse_args(argv)
    if args.layers_diff and len(args.files) != 2:
        p.error("--layers-diff takes two files")
    try:
        accounts = [account(f, args.seq) for f in args.files]
    except OSError as e:
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    if args.layers_diff:
        print(table({"second - first": diff(*accounts)}))
    else:
        print(table({f"[{i}]": a for i, a in enumerate(accounts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
