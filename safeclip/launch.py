"""Run a training stage in one process, or under `accelerate launch` when params ask for more.

    python -m safeclip.launch stages.sft [--params params.yaml]

`base.num_processes` x `base.num_machines` > 1 execs `accelerate launch` (DDP; gloo on CPU, NCCL on GPU);
otherwise the stage runs in this process, which saves accelerate's start-up on the 2-core default.
Multi-node: set MACHINE_RANK, MAIN_PROCESS_IP and MAIN_PROCESS_PORT in each node's environment.
"""

from __future__ import annotations

import os
import runpy
import sys

from safeclip.params import load_params


def accelerate_command(module: str, args: list[str], params_path: str) -> list[str] | None:
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


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    module, args = sys.argv[1], sys.argv[2:]
    params_path = args[args.index("--params") + 1] if "--params" in args else "params.yaml"
    cmd = accelerate_command(module, args, params_path)
    if cmd is None:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
