"""UWM's settings chosen on the **val** split, never on test: the bars' quantities (T*->V R@1, SafeGround PU,
T->V R@1) for each setting against the base CLIP, on one or more finished runs (e.g. seeds 0-2).

    python benchmarks/uwm_sweep.py REPO [REPO ...] [--tau 0.02 0.05 0.1] [--alpha -1 0]
        [--text out_proj q_proj,k_proj,v_proj,out_proj,fc1,fc2 -] [--vision out_proj fc2 -] [--priors tf ff]

Each REPO needs models/base_clip and data/visu/{train,val}.parquet. `--text` / `--vision` take layer sets
(comma-separated module-name suffixes, `-` leaves that tower's weights alone) and `--priors` the |W| prior per
tower (`tf`: text on, vision off, the world default). Without any of the three the sweep reuses the scores
make_safe@uwm cached in checkpoints/make_safe/uwm/ under that repo's params (one val embedding per setting);
with them it calibrates each (layers, prior) on the repo's train split with the stage's own functions (a few
seconds each). Prints one row per setting with the per-repo gains over the base in points and their mean; the
defaults are chosen on that mean.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import torch

TOWERS = ("text", "vision")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("repos", nargs="+")
    ap.add_argument("--tau", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--alpha", type=float, nargs="+", default=None, help="default: the repo's make_safe.uwm.alpha")
    ap.add_argument("--text", nargs="+", default=None, help="text layer sets; default: the repo's")
    ap.add_argument("--vision", nargs="+", default=None, help="vision layer sets; default: the repo's")
    ap.add_argument("--priors", nargs="+", default=None, choices=["tt", "tf", "ft", "ff"])
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
    from safeclip.methods.quadruples import load_quadruples
    from safeclip.methods.runners import TRAIN
    from safeclip.methods.runners import _uwm_batches as uwm_batches  # the stage's own calibration batches
    from safeclip.methods.uwm import apply_uwm, calibrate_tower, calibration_indices, target_layers
    from safeclip.params import load_params

    keys = {"T*->V R@1": "retrieval.t_star_to_v.r1", "PU": "safeground.PU", "T->V R@1": "retrieval.t_to_v.r1"}
    recalibrate = any(x is not None for x in (args.text, args.vision, args.priors))
    rows: dict[tuple, list[dict[str, float]]] = {}
    here = Path.cwd()
    for repo in args.repos:
        os.chdir(Path(repo).resolve())
        params = load_params("params.yaml")
        cfg, batch_size = params.make_safe.uwm, params.evaluate.batch_size
        text_sets = args.text or [",".join(cfg.text_layers) or "-"]
        vision_sets = args.vision or [",".join(cfg.vision_layers) or "-"]
        prior_flags = (cfg.magnitude_prior_text, cfg.magnitude_prior_vision)
        priors = args.priors or ["".join("t" if on else "f" for on in prior_flags)]
        alphas = args.alpha or [cfg.alpha]
        split = f"data/visu/{args.split}.parquet"
        base_bundle = load_clip("models/base_clip")
        base_emb, _ = embed_split(base_bundle, split, batch_size)
        base = retrieval_metrics(base_emb, [1], [1])
        print(f"{repo}: base on {args.split}: " + ", ".join(f"{k} {base[v]:.1f}" for k, v in keys.items()), flush=True)

        def tower_of(model, tower: str):
            return model.text_model if tower == "text" else model.vision_model

        def layers_of(model, tower: str, names: str):
            return target_layers(tower_of(model, tower), names.split(","))

        settings: list[tuple[str, str, str, dict[str, torch.Tensor]]] = []  # (text set, vision set, priors, scores)
        if recalibrate:
            train, _ = load_quadruples(TRAIN, base_bundle)
            idx = calibration_indices(len(train), cfg.calibration_pairs, params.base.seed)
            for text_set, vision_set, prior in itertools.product(text_sets, vision_sets, priors):
                model = load_clip("models/base_clip").model.eval()
                scores = {}
                for tower, names, on in (("text", text_set, prior[0] == "t"), ("vision", vision_set, prior[1] == "t")):
                    if names != "-":
                        batches = uwm_batches(train, idx, cfg.batch_size, tower)
                        scores[tower] = calibrate_tower(tower_of(model, tower), layers_of(model, tower, names),
                                                        batches, cfg.eps, on)
                settings.append((text_set, vision_set, prior, scores))
        else:
            caches = sorted(Path("checkpoints/make_safe/uwm").glob("scores-*.safetensors"))
            if len(caches) != 1:
                raise SystemExit(f"{repo}: expected one cached UWM score file, found {len(caches)}")
            flat = load_file(str(caches[0]))  # keys "<tower>/<layer>", as make_safe@uwm writes them
            cached = {t: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(t + "/")} for t in TOWERS}
            cached = {t: s for t, s in cached.items() if s}  # a tower the stage left alone has no scores
            settings.append((text_sets[0], vision_sets[0], priors[0], cached))
        for (text_set, vision_set, prior, scores), tau, alpha in itertools.product(settings, args.tau, alphas):
            bundle = load_clip("models/base_clip")
            model = bundle.model.eval()
            sets = {"text": text_set, "vision": vision_set}
            apply_uwm({t: (layers_of(model, t, sets[t]), scores[t]) for t in scores}, tau, alpha)
            emb, _ = embed_split(bundle, split, batch_size)
            m = retrieval_metrics(emb, [1], [1])
            rows.setdefault((text_set, vision_set, prior, tau, alpha), []).append(
                {k: m[v] - base[v] for k, v in keys.items()})
    os.chdir(here)
    print(f"\n{'text layers':24} {'vision layers':24} {'prior':5} {'tau':>6} {'alpha':>5}  "
          + "  ".join(f"{k + ' gain':>22}" for k in keys) + "   (per repo; mean)")
    for (text_set, vision_set, prior, tau, alpha), gains in rows.items():
        print(f"{text_set:24} {vision_set:24} {prior:5} {tau:6.3f} {alpha:5.1f}  "
              + "  ".join(f"{c:>22}" for c in cells(gains, list(keys), signed=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
