"""Train a stage (or a recipe of stages): python -m train.main --config CONFIG [key=value ...]

Exit codes: 0 done (or preempted by SIGTERM after saving), 1 stopped on a non-finite loss or on bad
data (strict mode, or nothing usable in the data), 2 bad usage, config or unusable data files (one
line on stderr, before anything is compiled).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Optional

EPILOG = """examples:
  python -m train.main --config configs/llava15/llava15_7b_finetune.yaml run_dir=runs/sft train.num_steps=100
  python -m train.main --config configs/llava15/llava15_7b_finetune.yaml --compile-only mesh.fsdp=8 mesh.data=1
  python -m train.main --config configs/llava15/recipe_7b.yaml          # stages in order, each resumable
multi-host: auto-detected on TPU pods and SLURM, or pass --coordinator-address/--num-processes/--process-id.
Rerunning the same command resumes from the newest good checkpoint in run_dir; a run_dir holding a run
of another config is refused (exit 2) unless --start-over sets that run aside (<run_dir>/previous, previous-2, ...)."""


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m train.main", description="Train a vlm_jax model from a YAML config.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML, or a recipe YAML with `stages:`")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.num_steps=10")
    p.add_argument("--compile-only", action="store_true",
                   help="compile the train step on the configured mesh against abstract shapes and print "
                        "per-device memory; allocates no model (fakes CPU devices if needed)")
    p.add_argument("--device-memory-gb", type=float, default=80.0, help="per-device memory for --compile-only's verdict")
    p.add_argument("--topology", metavar="NAME",
                   help="with --compile-only: compile for this TPU slice on any host with libtpu's compiler "
                        "(v4-8, v5e-16, v5p-8, v5p-128, v6e-256, ...; pip install 'vlm-jax[tpu]')")
    p.add_argument("--json", action="store_true", help="with --compile-only: the plan as one JSON object, last line")
    p.add_argument("--start-over", action="store_true",
                   help="set aside what run_dir holds (checkpoints, metrics, config, final/ -> run_dir/previous, "
                        "previous-2, ...) "
                        "and train from step 0 (every stage of a recipe)")
    p.add_argument("--coordinator-address", help="host:port of process 0 (multi-host without auto-detection)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    return p.parse_args(argv)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _force_cpu_devices(n: int) -> None:
    """Fake n host devices for compile-only planning (XLA reads the flag when the first backend
    starts, so this works as long as no device has been touched yet)."""
    if n <= 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _fixed_mesh_devices(cfg) -> int:
    """Devices the mesh needs when no axis is -1 (else 0)."""
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    return 0 if -1 in sizes else math.prod(sizes)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from train import stages as stages_lib
    from vlm_jax import config_check
    from vlm_jax.config import Config, ConfigError, load, load_yaml

    overrides = list(args.overrides)
    for flag, key in (("coordinator_address", "coordinator_address"), ("num_processes", "num_processes"),
                      ("process_id", "process_id")):
        if getattr(args, flag) is not None:
            overrides.append(f"distributed.{key}={getattr(args, flag)}")
    if (args.topology or args.json) and not args.compile_only:
        return _fail("--topology and --json go with --compile-only")
    try:
        raw = load_yaml(args.config)
        if stages_lib.is_recipe(raw):
            stages = stages_lib.load_recipe(args.config, raw, overrides, need_files=not args.compile_only)
        else:
            cfg = load(Config, args.config, overrides)
            config_check.check(cfg, need_files=not args.compile_only)
            stages = [stages_lib.Stage("", cfg, False)]
        if args.compile_only and args.topology:
            from train import compile_only

            return compile_only.run_on_topology(stages, args.topology, as_json=args.json)
        if args.compile_only:
            _force_cpu_devices(max(_fixed_mesh_devices(s.cfg) for s in stages))
        import jax

        from vlm_jax import sharding

        sharding.initialize_distributed(stages[0].cfg.distributed)
        for s in stages:
            config_check.check_devices(s.cfg, jax.device_count(), jax.process_count())
    except ConfigError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(str(e))

    if args.compile_only:
        from train import compile_only

        reports = compile_only.plan_stages(stages, device_memory_gb=args.device_memory_gb)
        if args.json:
            print(compile_only.json_line(stages, reports))
        return 0

    from train.trainer import NonFiniteLoss, train
    from vlm_jax.data.errors import DataError

    for s in stages:
        if s.name and stages_lib.stage_done(s) and not args.start_over:
            print(f"stage {s.name}: done ({s.cfg.run_dir}/final exists), skipping", file=sys.stderr)
            continue
        if s.name:
            print(f"== stage {s.name} -> {s.cfg.run_dir}", file=sys.stderr)
        try:
            summary = train(s.cfg, start_over=args.start_over)
        except NonFiniteLoss as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except ConfigError as e:  # incl. data files no run can use (data.errors.SourceError)
            return _fail(str(e))
        except DataError as e:  # strict mode's named record, or no usable example left
            print(f"error: {e}", file=sys.stderr)
            return 1
        if summary.get("preempted"):
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
