"""Compile a recipe's train step for hardware this machine does not have: does it fit?

  python -m train.compile --config configs/pretrain_base_code.py --target h100x8
  python -m train.compile --config configs/contrastive_base_code.py:hardneg --target v4-32 \
      [--stage contrastive] [--config.data.batch_size=512 ...] [--json out.json]

Builds exactly the step `train.pretrain` / `train.contrastive` would run with that config (the
stage is read from the config file's name, `contrastive*` or else pretrain, unless --stage
says), compiles it for the target's devices from abstract shapes (nothing is allocated) and
prints per-device memory against the device's with --headroom kept free, FLOPs per step,
the step time at --mfu, the attention kernel and the compile time. Exits 3 when the step does
not fit (on GPU too, where XLA itself only warns), 2 on bad input. Targets: TPU slices v4-8 ...
v5p-128, v5e-8 ... v5e-256, v6e-8 ...; GPU nodes h100x8, h200x8, a100x8, h100x16 .... Their
compilers (libtpu, XLA:GPU's plugin) live in folders of their own, beside the environment's
packages (jbert/training/compile_plugins.py): the error names the command that installs one,
and `scripts/env.sh` installs both for the test environment.
A base-code compile takes 20 s to 4 minutes and 1-4 GB of host memory on 2 CPU cores;
docs/scaling.md has the recipes' table.
"""

import argparse
import json
import sys

NO_FIT = 3  # the exit status of a step that compiled but does not fit (2: bad input)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    from jbert.training.compile_plugins import target_platform_in, use_compile_plugin

    platform = target_platform_in(argv)
    if platform:  # before JAX starts: it looks for its backends once
        use_compile_plugin(platform)
    from jbert.data.atomic import refuse_existing, write_text
    from jbert.errors import InputError
    from jbert.training.cli import (
        CONFIG_HELP,
        ArgumentParser,
        help_and_exit,
        parse_cli,
        usage_errors,
    )

    parser = ArgumentParser(
        prog="python -m train.compile", description=__doc__, epilog=CONFIG_HELP,
        usage="%(prog)s --config FILE[:ARG] --target TARGET [--config.KEY=VALUE ...]",
        formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--target", required=True, help="v5p-32, v4-32, v5e-16, h100x8, ...")
    parser.add_argument("--stage", choices=["pretrain", "contrastive"],
                        help="default: contrastive for configs/contrastive*, else pretrain")
    parser.add_argument("--headroom", type=float, default=0.10,
                        help="share of device memory kept free (default 0.10)")
    parser.add_argument("--mfu", type=float, default=0.40,
                        help="MFU the step time is estimated at (default 0.40)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    with usage_errors():
        help_and_exit(parser, argv)
        config, rest = parse_cli(argv)
        args = parser.parse_args(rest)
        if not (0.0 <= args.headroom < 1.0 and 0.0 < args.mfu <= 1.0):
            raise InputError(f"--headroom {args.headroom} must be in [0, 1), --mfu {args.mfu} "
                             "in (0, 1]")
        if args.json:
            refuse_existing(args.json, f"--json {args.json}", args.overwrite)

    import jax

    # Compile-only: the host's CPU runs nothing; no accelerator runtime is started.
    jax.config.update("jax_platforms", "cpu")
    from jbert.tasks.aot import compile_report, default_stage, format_report
    from jbert.training.targets import target

    spec = next(a.partition("=")[2] or b for a, b in zip(argv, [*argv[1:], ""], strict=True)
                if a == "--config" or a.startswith("--config="))
    with usage_errors(ValueError, ImportError):
        report = compile_report(config, target(args.target), args.stage or default_stage(spec),
                                headroom=args.headroom, mfu=args.mfu)
    print(format_report(report))
    if args.json:
        write_text(args.json, json.dumps(report, indent=1))
    if not report["fits"]:
        raise SystemExit(NO_FIT)
    return report


if __name__ == "__main__":
    main()
