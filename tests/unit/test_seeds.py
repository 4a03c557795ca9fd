"""The seeds table and the claims over seeds, on hand-made `dvc exp show --json` output."""

from __future__ import annotations

import json
import math

import pytest

from safeclip import seeds
from safeclip.io import InputError


def exp(name: str, seed: int, t_star: dict[str, float | None], pu: dict[str, float], lr: float = 1e-3) -> dict:
    """One experiment as DVC 3 lists it, with retrieval metrics for the base and two methods."""
    metrics = {}
    for m in ("none", "safe_clip", "safer_clip"):
        values = {"retrieval.t_star_to_v.r1": t_star[m], "safeground.PU": pu[m], "safeground.PS": 60.0}
        metrics[f"metrics/retrieval/{m}.json"] = {"data": {k: v for k, v in values.items() if v is not None}}
        metrics[f"metrics/zeroshot/{m}.json"] = {"data": {"zeroshot.mean": 40.0 if m != "safer_clip" else 45.0}}
    metrics["metrics/ingest.json"] = {"data": {"ingest.pairs": 100}}  # not a per-model file: ignored
    params = {"params.yaml": {"data": {"base": {"seed": seed, "scale": 1.0}, "sft": {"learning_rate": lr}}}}
    return {"rev": f"{seed:040d}", "name": name, "data": {"params": params, "metrics": metrics}, "error": None}


def exp_show(*experiments: dict, workspace: dict | None = None) -> list[dict]:
    ws = workspace or {"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None}
    return [ws, {"rev": "a" * 40, "name": "main", "data": {}, "error": None,
                 "experiments": [{"revs": [e]} for e in experiments]}]


RUNS = exp_show(
    exp("s0", 0, {"none": 10.0, "safe_clip": 30.0, "safer_clip": 20.0},
        {"none": 5.0, "safe_clip": 8.0, "safer_clip": 9.0}),
    exp("s1", 1, {"none": 12.0, "safe_clip": 20.0, "safer_clip": 25.0},
        {"none": 5.0, "safe_clip": 9.0, "safer_clip": 4.0}),
    exp("s2", 2, {"none": 11.0, "safe_clip": 28.0, "safer_clip": None},
        {"none": 5.0, "safe_clip": 10.0, "safer_clip": 7.0}),
)


def test_mean_sd_and_n_by_hand() -> None:
    runs = seeds.runs_from_exp_show(RUNS)
    assert [r.name for r in runs] == ["s0", "s1", "s2"] and [r.params["base.seed"] for r in runs] == [0, 1, 2]
    table = seeds.seeds_table(runs)
    s = table["safe_clip"]["retrieval.t_star_to_v.r1"]
    assert s.n == 3 and s.mean == pytest.approx(26.0)
    assert s.sd == pytest.approx(math.sqrt(((30 - 26) ** 2 + (20 - 26) ** 2 + (28 - 26) ** 2) / 2))  # 5.2915
    missing = table["safer_clip"]["retrieval.t_star_to_v.r1"]  # seed 2 lacks it: n drops, the mean is of two
    assert missing.n == 2 and missing.mean == pytest.approx(22.5) and missing.sd == pytest.approx(math.sqrt(12.5))
    assert seeds.summarise([4.0]) == seeds.Summary(4.0, None, 1) and seeds.summarise([None]).n == 0
    assert list(table) == ["none", "safe_clip", "safer_clip"]  # the base first


def test_claims_on_the_means_say_when_the_seeds_disagree() -> None:
    runs = seeds.runs_from_exp_show(RUNS)
    claims = {c["claim"]: c for c in seeds.claim_verdicts(runs, seeds.seeds_table(runs))}
    safe = claims["Safe-CLIP improves T*→V R@1 and PU over the base"]
    assert safe["per_seed"] == ["yes", "yes", "yes"] and safe["verdict"] == "yes" and safe["separable"]
    # SafeR-CLIP: PU 9 > 5, 4 < 5, 7 > 5 on the seeds -> yes, no, (T*→V missing) ...: not separable
    safer = claims["SafeR-CLIP improves T*→V R@1 and PU over the base"]
    assert not safer["separable"] and safer["verdict"] == "not separable at n = 3"
    # the means: SafeR-CLIP T*→V 22.5 vs Safe-CLIP 26.0
    assert claims["SafeR-CLIP redirects unsafe text better than Safe-CLIP (T*→V R@1)"]["on_means"] == "no"
    assert claims["SafeR-CLIP keeps more zero-shot accuracy than Safe-CLIP"]["verdict"] == "yes"


def test_only_the_seed_may_differ_and_seeds_are_unique() -> None:
    odd = exp("lr", 3, {"none": 1.0, "safe_clip": 2.0, "safer_clip": 3.0}, {"none": 1.0, "safe_clip": 1.0,
                                                                             "safer_clip": 1.0}, lr=5e-4)
    with pytest.raises(InputError, match="sft.learning_rate"):
        seeds.check_same_config(seeds.runs_from_exp_show(exp_show(*RUNS[1]["experiments"][0]["revs"], odd)))
    twice = exp_show(RUNS[1]["experiments"][0]["revs"][0], RUNS[1]["experiments"][0]["revs"][0])
    with pytest.raises(InputError, match="share a seed"):
        seeds.check_same_config(seeds.runs_from_exp_show(twice))
    with pytest.raises(InputError, match="dvc exp run --queue"):
        seeds.check_same_config([])


def test_a_non_numeric_metric_is_named() -> None:
    bad = exp("bad", 0, {"none": 1.0, "safe_clip": 2.0, "safer_clip": 3.0}, {"none": 1.0, "safe_clip": 1.0,
                                                                             "safer_clip": 1.0})
    bad["data"]["metrics"]["metrics/retrieval/none.json"]["data"]["safeground.PU"] = "n/a"
    with pytest.raises(InputError, match="metrics/retrieval/none.json: metric 'safeground.PU'"):
        seeds.runs_from_exp_show(exp_show(bad))


def test_the_command_writes_the_table_and_claims(tmp_path) -> None:
    src = tmp_path / "exp.json"
    src.write_text(json.dumps(RUNS))
    seeds.main(["--json", str(src), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out/seeds.md").read_text()
    assert "| Safe-CLIP | 26.0 ± 5.3 (n=3) |" in md and "not separable at n = 3" in md
    page = (tmp_path / "out/seeds.html").read_text()
    assert "<td class=\"num\">26.0 ± 5.3 (n=3)</td>" in page and "https://" not in page
    data = json.loads((tmp_path / "out/seeds.json").read_text())
    assert data["seeds"] == [0, 1, 2] and data["table"]["safer_clip"]["retrieval.t_star_to_v.r1"]["n"] == 2
