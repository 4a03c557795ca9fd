"""What every stage entry point does first: validate params.yaml, set up the process, report input errors."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from safeclip.inputs import check_inputs
from safeclip.io import InputError
from safeclip.params import Params, ParamsError, load_params
from safeclip.runtime import NonFiniteLoss, setup


def start(stage: str, argv: list[str] | None = None) -> tuple[Params, logging.Logger]:
    ap = argparse.ArgumentParser(prog=f"stages.{stage}")
    ap.add_argument("--params", default="params.yaml")
    args, _ = ap.parse_known_args(argv)  # matrix stages add their own flags (see `option`)
    params = load_params(args.params)
    check_inputs(params, stage)
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


def run_stage(main: Callable[[], None]) -> NoReturn:
    """Run a stage's main() as the program (`python -m stages.x`, under DVC or `accelerate launch`) and end the
    process without the interpreter's teardown.

    With torch and transformers loaded, Python's shutdown (module teardown, garbage collection) took 1.2-1.8 s of a
    ~5.5 s small stage here, once per stage: ~40 s of the world DAG and ~2 min of the test suite's stage starts.
    Nothing is lost by skipping it: outputs are written atomically before main() returns, and the logs and
    streams are flushed here. Tests call main() itself, in-process or in a forked child, and never reach this."""
    code = 0
    try:
        main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to flush to
            pass
    os._exit(code)


def option(name: str, choices: list[str] | None = None, argv: list[str] | None = None) -> str:
    """A required `--name VALUE` flag of a matrix stage (e.g. `--method safe_clip`)."""
    ap = argparse.ArgumentParser()
    ap.add_argument(f"--{name}", required=True, choices=choices)
    args, _ = ap.parse_known_args(argv)
    return getattr(args, name)
