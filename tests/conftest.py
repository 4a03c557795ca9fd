"""Test-wide settings: offline hub, one torch thread per process (`make test` runs two pytest workers on the
2 cores), CPU only; the order and grouping the two workers share the suite by."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# CPU by default, as in CI. SAFECLIP_GPU_TESTS=1 (`make test-gpu`) keeps the GPU visible so the tests marked
# `gpu` run on it; the other tests still run on the CPU (their params say device cpu).
GPU_TESTS = os.environ.get("SAFECLIP_GPU_TESTS") == "1"
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import safeclip  # noqa: E402, F401, I001  (first: pins the CPU kernels, as in every stage, before torch loads)
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# The two end-to-end files dominate the suite (the world DAG ~11 min, the paper DAG ~6.5 min at one thread):
# under `pytest -n 2` they start first, one per worker, and the rest fills in beside the shorter one.
FIRST = ("tests/e2e/test_pipeline.py", "tests/e2e/test_paper.py")
# Folders whose files share session-scoped fixtures: one worker runs all of such a folder, so they are built once.
SHARED_SESSION = ("tests/robustness",)


def _schedule_group(rel: str) -> str:
    """The xdist_group of a test file (`--dist loadgroup` keeps a group on one worker): its file, so that
    module-scoped fixtures (the e2e DAGs) are built once, or its folder for SHARED_SESSION."""
    return next((d for d in SHARED_SESSION if rel.startswith(d + "/")), rel)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    rel = {id(item): item.path.relative_to(config.rootpath).as_posix() for item in items}
    rank = {path: i for i, path in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(rel[id(item)], len(rank)))  # stable: the rest keep their order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_schedule_group(rel[id(item)])))
    if GPU_TESTS and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA and SAFECLIP_GPU_TESTS=1 (make test-gpu)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
