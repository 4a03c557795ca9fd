"""judge: world -> train the oracle image judge on real renders (held-out scenes for its accuracy) ->
models/judge; every profile: check the off-the-shelf judges load, and how often they flag harmless images."""

import json

import numpy as np
from PIL import Image

from safeclip.data.captions import render_config
from safeclip.eval.judges import WORLD_JUDGE, build_panel, flag_images
from safeclip.io import InputError, atomic_dir, write_metrics, write_plot_csv
from safeclip.runtime import scaled
from safeclip.stage import entry_point, run_stage, start
from safeclip.world.catalogue import OBJECTS
from safeclip.world.scene import enumerate_scenes


@entry_point
def main() -> None:
    params, log = start("judge")
    cfg, seed = params.judge, params.base.seed
    if not cfg.judges:
        raise InputError("judge.judges is empty: enable at least one judge (world, nudenet, opennsfw, q16)")
    metrics: dict[str, float | int] = {}
    with atomic_dir(WORLD_JUDGE.parent) as out:
        (out / "judges.json").write_text(json.dumps({"judges": cfg.judges}) + "\n")
        if "world" in cfg.judges:
            if params.captions.source != "world":
                raise InputError("judge.judges: 'world' judges world renders only; remove it outside the world")
            from safeclip.eval import world_judge as wj

            w = cfg.world
            train, held = wj.judge_split(enumerate_scenes(tuple(OBJECTS), params.world.positions),
                                         w.held_out_fraction, seed)
            rcfg = render_config(params.world)
            n = scaled(len(train), params.base.scale, 64)
            x, y = wj.render_judge_set(train[:n], w.renders_per_scene, rcfg, seed)
            log.info("world judge: %d renders of %d training scenes", len(x), n)
            model, curve = wj.train_world_judge(x, y, w, seed, log, noise_std=params.world.noise_std)
            hx, hy = wj.render_judge_set(held, 1, rcfg, seed + 1)
            acc = wj.judge_accuracy(model, hx, hy)
            metrics.update({f"judge.world.held_out.{k}": 100 * v for k, v in acc.items()})
            metrics["judge.world.held_out_images"] = len(hx)
            wj.save_world_judge(model, out / WORLD_JUDGE.name)
            write_plot_csv("plots/judge.csv", curve)
            log.info("world judge on %d held-out scenes: %s", len(held), {k: round(100 * v, 1) for k, v in acc.items()})
    # Every profile loads the off-the-shelf judges here, so one that cannot load fails now, not after
    # eval_generation has drawn its images. In the world they are also run on harmless renders: they should
    # flag (almost) none.
    others = [j for j in cfg.judges if j != "world"]
    if params.captions.source == "world":  # and the ones checked here only, not on every generated image
        others += [j for j in cfg.false_positive_judges if j not in others]
    panel = build_panel(cfg.model_copy(update={"judges": others}), params.captions.source) if others else []
    if params.captions.source != "world":
        metrics.update({f"judge.{j.name}.loaded": 1 for j in panel})
        log.info("judges loaded: %s", ", ".join(j.name for j in panel) or "none")
    elif panel:
        scenes = enumerate_scenes(tuple(o for o in OBJECTS if not OBJECTS[o].unsafe), params.world.positions)
        pick = np.random.default_rng([seed, 7]).permutation(len(scenes))[:scaled(200, params.base.scale, 8)]
        from safeclip.world.render import render

        images = [Image.fromarray(render(scenes[i], int(i), render_config(params.world))) for i in pick]
        for j in panel:
            metrics[f"judge.{j.name}.flags_safe_world"] = 100 * float(np.mean(flag_images(j, images)))
    if "world" not in cfg.judges:
        write_plot_csv("plots/judge.csv", [])
    write_metrics("metrics/judge.json", metrics)


if __name__ == "__main__":
    run_stage(main)
