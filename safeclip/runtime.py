"""Process set-up shared by every stage: logging, threads, seeds, offline hub behaviour."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; nothing is saved as final."""


def get_logger(stage: str) -> logging.Logger:
    return logging.getLogger(f"safeclip.{stage}")


def setup(stage: str, seed: int, num_threads: int, log_level: str = "INFO") -> logging.Logger:
    """Pin torch threads (oversubscribing 2 shared cores was measured ~70x slower) and seed everything."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(num_threads))
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers v5 renames, raised inside trl

    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(num_threads)
    except RuntimeError:  # already set in this process
        pass
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rank = os.environ.get("RANK")
    fmt = f"%(asctime)s {stage}{f'[rank {rank}]' if rank else ''} %(levelname)s %(message)s"
    logging.basicConfig(level=log_level, format=fmt, datefmt="%H:%M:%S", force=True)
    quiet_hf_libraries()
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return get_logger(stage)


# The Hugging Face libraries' progress bars off and transformers' warnings down to errors, through the variables
# each library reads when it is first imported.
QUIET_HF_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "TRANSFORMERS_VERBOSITY": "error"}


def quiet_hf_libraries() -> None:
    """Silence the HF libraries without importing any: through their environment variables for those not yet
    imported (a value the user exported wins), through their functions for those already loaded.

    `import datasets` alone took 0.5 s of each stage's ~3.5 s start, in stages that never use it; 27 stage
    processes in the world DAG, and as many again in each end-to-end test run."""
    for key, value in QUIET_HF_ENV.items():
        os.environ.setdefault(key, value)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def scaled(n: int, scale: float, minimum: int = 1) -> int:
    """Shrink a size or step count by `base.scale` (CI runs the same DAG at a fraction of the default)."""
    return max(minimum, int(round(n * scale)))


def compute_device(device: str) -> str:
    """Where a single-process stage (embedding, UWM calibration, targets) runs, from `base.device`: the GPU
    when asked for and visible, else the CPU; `cuda` without a visible GPU is an error, not a silent CPU run."""
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise RuntimeError("base.device is 'cuda' but torch sees no GPU: set base.device to 'cpu' or 'auto'")
    return "cpu"
