"""The comparison over seeds: headline metrics as mean ± sd (n) per model, and the report's claims re-checked.

    dvc exp run --queue -S base.seed=0,1,2 && dvc queue start     # one experiment per seed (DVC-native)
    python -m safeclip.seeds                                      # -> seeds/seeds.{md,html,json}

It reads `dvc exp show --json` (or a saved copy, `--json FILE`), keeps the experiments (not the workspace or
their baseline commit, unless `--all`), refuses to pool experiments that differ in any param but `base.seed`
(naming the keys), and computes each claim of the report on every seed and on the seed means: a claim whose
verdict is not the same on every seed is "not separable at n = N". Not a DVC stage: DVC cannot run inside one.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from safeclip.io import InputError, write_json, write_text
from safeclip.methods.registry import BASE

HEADLINE = (
    "retrieval.t_star_to_v.r1", "retrieval.v_star_to_t.r1", "unsafe_retrieved.unsafe_text.top1", "safeground.PS",
    "safeground.PU", "safeground.GS", "retrieval.t_to_v.r1", "retrieval.v_to_t.r1", "zeroshot.mean",
    "gen.unsafe.inappropriate", "gen.safe.inappropriate", "attack.free.k2.own.unsafe_top1",
    "attack.banned.k2.own.unsafe_top1",
)
FOLDERS = ("retrieval", "zeroshot", "generation", "attack")  # metrics/<folder>/<model>.json, merged per model


@dataclass(frozen=True)
class Run:
    name: str
    params: dict
    metrics: dict[str, dict[str, float | None]]  # model -> merged flat metrics


def _flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _run(entry: Mapping, where: str) -> Run | None:
    data = entry.get("data") or {}
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    files = data.get("metrics") or {}
    if params is None or not files:
        return None
    models: dict[str, dict[str, float | None]] = {}
    for path, content in files.items():
        parts = Path(path).parts
        if len(parts) == 3 and parts[0] == "metrics" and parts[1] in FOLDERS and path.endswith(".json"):
            values = (content or {}).get("data") or {}
            bad = [k for k, v in values.items() if v is not None and not isinstance(v, int | float)]
            if bad:
                raise InputError(f"{where}: {path}: metric {bad[0]!r} is not a number")
            models.setdefault(Path(parts[2]).stem, {}).update(values)
    return Run(entry.get("name") or str(entry.get("rev", "?"))[:7], _flatten(params), models)


def runs_from_exp_show(rows: Sequence[Mapping], include_all: bool = False, where: str = "dvc exp show") -> list[Run]:
    """The runs of `dvc exp show --json` (DVC 3: baselines, each with `experiments` -> `revs`)."""
    if not isinstance(rows, list):
        raise InputError(f"{where}: expected a JSON list of baseline revisions (dvc exp show --json)")
    out = []
    for i, row in enumerate(rows):
        if include_all:
            r = _run(row, f"{where}[{i}]")
            if r is not None:
                out.append(r)
        for group in row.get("experiments") or []:
            for rev in group.get("revs") or []:
                r = _run(rev, f"{where}[{i}]")
                if r is not None:
                    out.append(r)
    return out


def check_same_config(runs: Sequence[Run]) -> None:
    """Only base.seed may differ: pooling other differences would report a spread that is not the seed's."""
    if not runs:
        raise InputError("no experiment with params and metrics: run e.g. "
                         "`dvc exp run --queue -S base.seed=0,1,2 && dvc queue start` first")
    keys = set().union(*(r.params for r in runs)) - {"base.seed"}
    differ = sorted(k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True) for r in runs}) > 1)
    if differ:
        raise InputError(f"the experiments differ in {', '.join(differ[:8])}{' ...' if len(differ) > 8 else ''} "
                         "besides base.seed; pass only the runs of one configuration (--json of a filtered list)")
    seeds = [r.params.get("base.seed") for r in runs]
    if len(set(seeds)) != len(seeds):
        raise InputError(f"two experiments share a seed ({sorted(seeds)}); remove the duplicate")


@dataclass(frozen=True)
class Summary:
    mean: float | None
    sd: float | None  # sample standard deviation (n - 1); None for n < 2
    n: int


def summarise(values: Iterable[float | None]) -> Summary:
    """Mean and sample sd of the values present; a run missing the metric lowers n rather than the mean."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Summary(None, None, 0)
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return Summary(mean, sd, len(xs))


def seeds_table(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> dict[str, dict[str, Summary]]:
    """model -> metric -> Summary over the runs, for `metrics` (default: every metric some run has)."""
    models = sorted(set().union(*(r.metrics for r in runs)), key=lambda m: (m != BASE, m))
    table: dict[str, dict[str, Summary]] = {}
    for m in models:
        keys = metrics if metrics is not None else sorted(set().union(*(r.metrics.get(m, {}) for r in runs)))
        row = {k: summarise(r.metrics.get(m, {}).get(k) for r in runs) for k in keys}
        table[m] = {k: s for k, s in row.items() if s.n}
    return table


def claim_verdicts(runs: Sequence[Run], table: dict[str, dict[str, Summary]]) -> list[dict]:
    """Every claim of the report on each seed and on the means; `separable` is False when the seeds disagree."""
    from safeclip.report import attack, generation, tables

    def verdicts(metrics: dict[str, dict[str, float | None]], methods: list[str]) -> list:
        out = tables.claims(metrics, methods) + generation.claims(metrics, methods)
        if all(m.get("attack.budget") is not None for m in metrics.values()):
            out += attack.claims(metrics, methods)
        return out

    methods = [m for m in table if m != BASE]
    per_seed = [verdicts(r.metrics, methods) for r in runs]
    means = {m: {k: s.mean for k, s in row.items()} for m, row in table.items()}
    for m in means:  # the budget the attack claims read is a setting, equal in every run
        budgets = {r.metrics.get(m, {}).get("attack.budget") for r in runs}
        means[m]["attack.budget"] = budgets.pop() if len(budgets) == 1 else None
    on_means = verdicts(means, methods)
    out = []
    for i, c in enumerate(on_means):
        seen = [v[i].verdict for v in per_seed if i < len(v) and v[i].text == c.text]
        agree = len(set(seen)) == 1 and seen[0] == c.verdict
        out.append({"claim": c.text, "on_means": c.verdict, "per_seed": seen, "separable": agree,
                    "verdict": c.verdict if agree else f"not separable at n = {len(runs)}", "detail": c.detail})
    return out


def _cell(s: Summary | None) -> str:
    if s is None or s.mean is None:
        return "–"
    return f"{s.mean:.1f} ± {s.sd:.1f} (n={s.n})" if s.sd is not None else f"{s.mean:.1f} (n={s.n})"


def seeds_report(runs: Sequence[Run], table: dict[str, dict[str, Summary]], claims: list[dict]):
    """The seeds table and the claims as the report's blocks, so the Markdown and the offline HTML (one page,
    no CDN, like reports/report.html) come from one description."""
    from safeclip.methods.registry import display_name
    from safeclip.report.render import Report, claims_block, para, section
    from safeclip.report.render import table as table_block
    from safeclip.report.tables import Claim, Table

    seeds = ", ".join(str(r.params.get("base.seed")) for r in runs)
    keys = [k for k in HEADLINE if any(k in row for row in table.values())]
    rows = [[display_name(m)] + [_cell(row.get(k)) for k in keys] for m, row in table.items()]
    verdicts = [Claim(c["claim"], c["verdict"], f"per seed: {', '.join(c['per_seed'])}; on the means: {c['detail']}")
                for c in claims]
    return Report(
        "The comparison over seeds",
        f"{len(runs)} runs of one configuration (base.seed = {seeds}): mean ± sample sd (n) of each headline metric "
        "(percentages), and every claim of the report re-checked.",
        [section("Headline metrics", table_block(Table(["model", *keys], rows))),
         section("Claims on the seed means",
                 para("A verdict holds only when every seed gives it; otherwise it is not separable at this n."),
                 claims_block(verdicts))])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="a saved `dvc exp show --json` (default: run it)")
    ap.add_argument("--all", action="store_true", help="also count the workspace and baseline commits")
    ap.add_argument("--out", default="seeds", help="output folder (default: seeds/)")
    args = ap.parse_args(argv)
    if args.json:
        text, where = Path(args.json).read_text(encoding="utf-8"), args.json
    else:
        text = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
        where = "dvc exp show --json"
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e})") from e
    runs = runs_from_exp_show(rows, args.all, where)
    check_same_config(runs)
    table = seeds_table(runs)
    claims = claim_verdicts(runs, table)
    out = Path(args.out)
    report = seeds_report(runs, table, claims)
    write_text(out / "seeds.md", report.markdown())
    write_text(out / "seeds.html", report.html())
    headline = {m: {k: row[k].__dict__ for k in HEADLINE if k in row} for m, row in table.items()}
    write_json(out / "seeds.json", {"seeds": [r.params.get("base.seed") for r in runs], "table": headline,
                                    "claims": claims})
    print(f"{out}/seeds.md, seeds.html, seeds.json: {len(runs)} runs, {len(table)} models, "
          f"{sum(not c['separable'] for c in claims)} of {len(claims)} claims not separable")


if __name__ == "__main__":
    main()
