"""What every stage entry point does first: validate params.yaml, set up the process, report input errors."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable

from safeclip.inputs import require_tracked_inputs
from safeclip.io import InputError
from safeclip.params import Params, ParamsError, load_params
from safeclip.runtime import NonFiniteLoss, setup


def start(stage: str, argv: list[str] | None = None) -> tuple[Params, logging.Logger]:
    ap = argparse.ArgumentParser(prog=f"stages.{stage}")
    ap.add_argument("--params", default="params.yaml")
    args, _ = ap.parse_known_args(argv)  # matrix stages add their own flags (see `option`)
    params = load_params(args.params)
    require_tracked_inputs(params, stage)
    log = setup(stage, params.base.seed, params.base.num_threads, params.log.level)
    return params, log


def entry_point(fn: Callable[[], None]) -> Callable[[], None]:
    """Turn user-input problems into a one-paragraph message and exit code 2, and a NaN/inf training loss into
    one with exit code 3, not a traceback (the stage has written no output by then)."""
    @functools.wraps(fn)
    def wrapper() -> None:
        try:
            fn()
        except (InputError, ParamsError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except NonFiniteLoss as e:
            print(f"error: training stopped: {e}", file=sys.stderr)
            sys.exit(3)
    return wrapper


def option(name: str, choices: list[str] | None = None, argv: list[str] | None = None) -> str:
    """A required `--name VALUE` flag of a matrix stage (e.g. `--method safe_clip`)."""
    ap = argparse.ArgumentParser()
    ap.add_argument(f"--{name}", required=True, choices=choices)
    args, _ = ap.parse_known_args(argv)
    return getattr(args, name)
