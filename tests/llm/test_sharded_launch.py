"""DPO's preference sampling under `accelerate launch` with two CPU processes: each rank samples its own shard
of the captions, and every rank gets all of them back in order. Unless accelerate is told the processes run on
the CPU, each one sees a world of one and samples every caption (twice the work, in a 2-process run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from safeclip.launch import accelerate_command

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, sys
    from safeclip.llm import generate

    sampled = []
    def fake_rewrite(model, tok, captions, *, seed, **kw):
        sampled.extend(captions)
        return [[f"{c}#{seed}"] for c in captions]
    generate.rewrite = fake_rewrite
    captions = [f"caption {i}" for i in range(5)]
    out = generate.rewrite_sharded(None, None, captions, seed=3, cpu=True)
    from accelerate import PartialState
    state = PartialState(cpu=True)
    with open(f"rank{state.process_index}.json", "w") as f:  # not stdout: the ranks' lines interleave there
        json.dump({"rank": state.process_index, "sampled": sampled, "out": out}, f)
    state.wait_for_everyone()
    state.destroy_process_group()  # gloo aborts now and then at an exit with the group alive (stages os._exit)
""")


def test_two_cpu_processes_each_sample_their_own_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sample.py").write_text(SCRIPT)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(num_processes=2, num_threads=1, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)  # accelerate_command sets it here: undone afterwards
    cmd = accelerate_command("sample", [], str(tmp_path / "params.yaml"))  # the launch every stage gets
    assert cmd is not None and cmd[0] == "accelerate"
    cmd[0] = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["sampled"] for r in results] == [["caption 0", "caption 1", "caption 2"], ["caption 3", "caption 4"]]
    expected = [[f"caption {i}#{3 * 1_000_003 + (i >= 3)}"] for i in range(5)]
    assert all(r["out"] == expected for r in results)
