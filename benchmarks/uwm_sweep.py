"""UWM's tau (and the towers it edits) chosen on the **val** split, never on test: the bars' quantities (T*->V R@1,
SafeGround PU, T->V R@1) for each setting against the base CLIP, on one or more finished runs (e.g. seeds 0-2).

    python benchmarks/uwm_sweep.py REPO [REPO ...] [--tau 0.02 0.05 0.1] [--towers text vision both]

Each REPO needs models/base_clip, data/visu/val.parquet and the calibration scores make_safe@uwm cached in
checkpoints/make_safe/uwm/ (so this costs one val embedding per setting, not a calibration). The scores are the
ones the stage computed under that repo's params (layers, priors); the sweep varies only tau and which towers
are edited (a tower left out keeps its weights). Prints one row per setting with the per-repo gains over the
base in points and their mean; the defaults are chosen on that mean.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("repos", nargs="+")
    ap.add_argument("--tau", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--towers", nargs="+", default=["both", "text", "vision"], choices=["both", "text", "vision"])
    ap.add_argument("--split", default="val", choices=["val", "train"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    torch.set_num_threads(args.threads)

    from safetensors.torch import load_file
    from sweep_table import cells

    from safeclip.clip.model import load_clip
    from safeclip.eval.embed import embed_split
    from safeclip.eval.suite import retrieval_metrics
    from safeclip.methods.uwm import apply_uwm, target_layers
    from safeclip.params import load_params

    keys = {"T*->V R@1": "retrieval.t_star_to_v.r1", "PU": "safeground.PU", "T->V R@1": "retrieval.t_to_v.r1"}
    rows: dict[tuple[str, float], list[dict[str, float]]] = {}
    here = Path.cwd()
    for repo in args.repos:
        os.chdir(Path(repo).resolve())
        params = load_params("params.yaml")
        cfg, batch_size = params.make_safe.uwm, params.evaluate.batch_size
        caches = sorted(Path("checkpoints/make_safe/uwm").glob("scores-*.safetensors"))
        if len(caches) != 1:
            raise SystemExit(f"{repo}: expected one cached UWM score file, found {len(caches)}")
        flat = load_file(str(caches[0]))  # keys "<tower>/<layer>", as make_safe@uwm writes them
        scores = {t: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(t + "/")}
                  for t in ("text", "vision")}
        split = f"data/visu/{args.split}.parquet"
        base_emb, _ = embed_split(load_clip("models/base_clip"), split, batch_size)
        base = retrieval_metrics(base_emb, [1], [1])
        print(f"{repo}: base on {args.split}: " + ", ".join(f"{k} {base[v]:.1f}" for k, v in keys.items()), flush=True)
        for towers in args.towers:
            for tau in args.tau:
                bundle = load_clip("models/base_clip")
                model = bundle.model.eval()
                edit = {"text": (model.text_model, cfg.text_layers), "vision": (model.vision_model, cfg.vision_layers)}
                chosen = [t for t in edit if towers in ("both", t)]
                apply_uwm({t: (target_layers(*edit[t]), scores[t]) for t in chosen}, tau, cfg.alpha)
                emb, _ = embed_split(bundle, split, batch_size)
                m = retrieval_metrics(emb, [1], [1])
                rows.setdefault((towers, tau), []).append({k: m[v] - base[v] for k, v in keys.items()})
    os.chdir(here)
    print(f"\n{'towers':8} {'tau':>6}  " + "  ".join(f"{k + ' gain':>22}" for k in keys) + "   (per repo; mean)")
    for (towers, tau), gains in rows.items():
        print(f"{towers:8} {tau:6.3f}  " + "  ".join(f"{c:>22}" for c in cells(gains, list(keys), signed=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
