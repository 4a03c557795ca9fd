"""Run a stage: every DVC stage's command is `python -m safeclip.launch stages.NAME [args]`.

    python -m safeclip.launch stages.sft [--params params.yaml]

The stage runs in a process forked from a warm one that has its libraries imported (`safeclip/zygote.py`:
~0.2 s to start instead of ~3-4 s), or in this process while none is warm yet.
A stage in `DISTRIBUTED` runs under `accelerate launch` when `base.num_processes` x `base.num_machines` > 1
(DDP; gloo on CPU, NCCL on GPU); otherwise it runs in one process, which saves accelerate's start-up on the
2-core default. Multi-node: set MACHINE_RANK, MAIN_PROCESS_IP and MAIN_PROCESS_PORT in each node's environment.
"""

from __future__ import annotations

import os
import runpy
import sys

# The stages that train or sample under accelerate (one process per GPU); the others always run in one process
DISTRIBUTED = frozenset({"stages.base_llm", "stages.sft", "stages.dpo", "stages.visu", "stages.base_clip",
                         "stages.make_safe"})


def accelerate_command(module: str, args: list[str], params_path: str) -> list[str] | None:
    from safeclip.params import load_params

    base = load_params(params_path).base
    if base.num_processes * base.num_machines == 1:
        return None
    cmd = ["accelerate", "launch", "--num_processes", str(base.num_processes * base.num_machines),
           "--num_machines", str(base.num_machines), "--mixed_precision", base.mixed_precision,
           "--dynamo_backend", "no", "--multi_gpu"]
    if base.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if base.num_machines > 1:
        cmd += ["--machine_rank", os.environ.get("MACHINE_RANK", "0"),
                "--main_process_ip", os.environ.get("MAIN_PROCESS_IP", "127.0.0.1"),
                "--main_process_port", os.environ.get("MAIN_PROCESS_PORT", "29500")]
    return cmd + ["-m", module, *args]


def run_here(argv: list[str]) -> None:
    """Run `python -m ARGV[0] ARGV[1:]` in this process, or exec `accelerate launch` for it."""
    module, args = argv[0], argv[1:]
    params_path = args[args.index("--params") + 1] if "--params" in args else "params.yaml"
    cmd = accelerate_command(module, args, params_path) if module in DISTRIBUTED else None
    if cmd is None:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        os.execvp(cmd[0], cmd)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    from safeclip import zygote

    status = zygote.run(sys.argv[1:])
    if status is None:
        run_here(sys.argv[1:])
    else:
        zygote.exit_as(status)


if __name__ == "__main__":
    main()
