"""Numerical faults: a learning rate of 1e30 (set through params.yaml, as a typo would) blows the weights up and
the loss turns NaN/inf within two steps. Every trainer must stop there, say at which step and with which loss
terms, exit non-zero without a traceback, and save nothing as final."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from safeclip.methods.safe_clip import TERMS
from tests.robustness.util import clone_workspace, leftovers, run_in_process, write_params


def with_params(ws: Path, section: str, **values) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    node = params
    for key in section.split("."):
        node = node[key]
    node.update(values)
    write_params(ws, params)


def assert_stopped(r, ws: Path, outputs: tuple[str, ...], *terms: str) -> int:
    """Exit 3 with one message naming the step and the terms; no output. Returns the step."""
    assert r.code == 3, r
    assert "Traceback" not in r.err, r
    m = re.search(r"error: training stopped: non-finite loss (nan|inf|-inf) at step (\d+); terms: \{(.*)\}\. "
                  r"Nothing was saved as final", r.err)
    assert m, r
    for term in terms:
        assert f"'{term}'" in m.group(3), f"{term} missing from the terms: {m.group(3)}"
    assert leftovers(ws, outputs) == []
    return int(m.group(2))


def test_sft_stops_on_a_nan_loss(world, tmp_path):
    outputs = ("models/llm_sft", "metrics/sft.json", "plots/sft.csv")
    ws = clone_workspace(world, tmp_path / "ws", drop=outputs)
    with_params(ws, "sft", learning_rate=1e30)
    step = assert_stopped(run_in_process(ws, "stages.sft"), ws, outputs, "loss")
    assert 1 <= step <= 3
    assert not list((ws / "checkpoints/sft").glob("checkpoint-*")), "no checkpoint of the broken weights either"


def test_dpo_stops_on_a_nan_loss_naming_its_terms(world, tmp_path):
    outputs = ("models/llm_dpo", "data/dpo", "metrics/dpo.json", "plots/dpo.csv")
    ws = clone_workspace(world, tmp_path / "ws", drop=outputs)
    with_params(ws, "dpo", learning_rate=1e30, save_steps=100)
    step = assert_stopped(run_in_process(ws, "stages.dpo"), ws, outputs, "loss", "rewards/margins",
                          "logps/chosen")
    assert 1 <= step <= 3


def test_base_clip_stops_on_a_nan_loss(world, tmp_path):
    outputs = ("models/base_clip", "metrics/base_clip.json", "plots/base_clip.csv")
    ws = clone_workspace(world, tmp_path / "ws", drop=outputs)
    with_params(ws, "base_clip.world", learning_rate=1e30, renders_per_scene=1, batch_size=32, hidden_size=16,
                intermediate_size=32, num_layers=1, num_heads=2, projection_dim=16, patch_size=8)
    step = assert_stopped(run_in_process(ws, "stages.base_clip"), ws, outputs, "loss")
    assert step <= 2


def test_make_safe_stops_on_a_nan_loss_naming_the_eight_terms(clip_ws, tmp_path):
    outputs = ("models/safe/safe_clip", "metrics/make_safe/safe_clip.json", "plots/make_safe/safe_clip.csv")
    ws = clone_workspace(clip_ws, tmp_path / "ws")
    with_params(ws, "make_safe.safe_clip", learning_rate=1e30)
    step = assert_stopped(run_in_process(ws, "stages.make_safe", "--method", "safe_clip"), ws, outputs, *TERMS)
    assert step <= 2


def _one_process(rank: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from safeclip.clip.training import check_finite
    from safeclip.runtime import NonFiniteLoss

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    loss = torch.tensor(float("nan") if rank == 1 else 0.5)
    try:
        check_finite(loss, 7, {"nce.text_unsafe": loss})
        Path(out).write_text("went on")
    except NonFiniteLoss as e:
        Path(out).write_text(str(e))


def test_a_nan_in_one_process_stops_every_process(tmp_path):
    """Data parallel: the process whose batch was fine stops too, instead of waiting forever in the next
    all-reduce for the one that stopped."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    init = f"file://{tmp_path / 'pg'}"
    procs = [ctx.Process(target=_one_process, args=(r, init, str(tmp_path / f"rank{r}.txt")), daemon=True)
             for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert not p.is_alive(), "a process hung"
    assert (tmp_path / "rank1.txt").read_text().startswith("non-finite loss nan at step 7; terms: "
                                                           "{'nce.text_unsafe': nan}")
    assert (tmp_path / "rank0.txt").read_text().startswith("non-finite loss 0.5 on another process at step 7")
