"""Hand-made generation inputs for the report tests: what eval_generation@<model> and judge write.

The numbers are chosen so each case the report words differently occurs once: Safe-CLIP lowers the unsafe-prompt
rate but raises the safe-prompt rate (+2.7, inside the over-blocking band), SafeR-CLIP lowers both, UWM raises the
unsafe-prompt rate and leaves the safe one unchanged, and UWM's file lacks the world-only `drew.*` keys.
"""

import io
import json
from pathlib import Path

from PIL import Image


def gen_json(unsafe, safe, clip_u, clip_s, concepts, judges_u, judges_s, drew=None, images=16):
    out = {"gen.unsafe.inappropriate": unsafe, "gen.safe.inappropriate": safe,
           "gen.unsafe.clip_score": clip_u, "gen.safe.clip_score": clip_s,
           "gen.unsafe.images": images, "gen.safe.images": images}
    for c, v in concepts.items():
        out[f"gen.unsafe.concept.{c}"] = v
    if concepts:
        out["gen.unsafe.concept_mean"] = sum(concepts.values()) / len(concepts)
    for j, v in judges_u.items():
        out[f"gen.unsafe.judge.{j}"] = v
    for j, v in judges_s.items():
        out[f"gen.safe.judge.{j}"] = v
    if drew is not None:
        obj_u, twin, obj_s = drew
        out.update({"gen.unsafe.drew.object": obj_u, "gen.unsafe.drew.safe_twin": twin,
                    "gen.safe.drew.object": obj_s})
    return out


GENERATION = {
    "none": gen_json(72.1, 6.3, 21.0, 30.5, {"weapons": 80.0, "drug_use": 64.0},
                     {"world": 70.0, "nudenet": 10.0}, {"world": 5.0, "nudenet": 1.3}, drew=(80.0, 5.0, 90.0)),
    "safe_clip": gen_json(20.4, 9.0, 27.5, 29.0, {"weapons": 25.0, "drug_use": 15.0},
                          {"world": 18.0, "nudenet": 4.0}, {"world": 8.0, "nudenet": 1.0}, drew=(15.0, 60.0, 85.0)),
    "safer_clip": gen_json(15.0, 5.0, 28.0, 30.0, {"weapons": 20.0, "drug_use": 10.0},
                           {"world": 14.0, "nudenet": 2.0}, {"world": 4.0, "nudenet": 1.0}, drew=(10.0, 70.0, 91.0)),
    "uwm": gen_json(75.0, 6.3, 20.0, 30.4, {"weapons": 90.0, "drug_use": 60.0},
                    {"world": 74.0, "nudenet": 9.0}, {"world": 5.0, "nudenet": 1.3}),  # no world-only keys
}
JUDGE = {"judge.world.held_out.object": 98.5, "judge.world.held_out.colour": 99.0,
         "judge.world.held_out.position": 97.25, "judge.world.held_out.background": 100.0,
         "judge.world.held_out.unsafe": 99.5, "judge.world.held_out.all": 95.0, "judge.world.held_out_images": 400,
         "judge.nudenet.flags_safe_world": 1.5, "judge.opennsfw.flags_safe_world": 0.0}
COLOURS = [(200, 30, 30), (30, 160, 30), (30, 30, 200), (200, 200, 30), (120, 30, 160)]


def grid_png(i: int) -> bytes:
    """A small two-row grid PNG (8 x 2 tiles of 6 px) in a colour of its own, so each model's bytes differ."""
    im = Image.new("RGB", (8 * 6, 2 * 6), COLOURS[i % len(COLOURS)])
    im.paste((255, 255, 255), (0, 6, 48, 12))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_generation(root: Path, models, generation=None, judge=JUDGE) -> None:
    """metrics/generation/<m>.json and data/generation/<m>/grid.png per model, and metrics/judge.json; a model
    missing from `generation` gets the UWM numbers (any model name the retrieval fixture invents)."""
    generation = GENERATION if generation is None else generation
    (root / "metrics/generation").mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(models):
        (root / f"metrics/generation/{m}.json").write_text(json.dumps(generation.get(m, GENERATION["uwm"])))
        (root / f"data/generation/{m}").mkdir(parents=True, exist_ok=True)
        (root / f"data/generation/{m}/grid.png").write_bytes(grid_png(i))
    if judge is not None:
        (root / "metrics/judge.json").write_text(json.dumps(judge))


def attack_json(clean, free, banned, gen=None, k=2, exhaustive=None):
    """What eval_attack@<model> writes, at the headline budget k; `gen` = (clean, free, banned) % inappropriate."""
    out = {"attack.budget": k, "attack.prompts": 160}
    for g, shift in (("own", 0.0), ("text_only", -5.0)):
        out[f"attack.clean.{g}.unsafe_top1"] = clean + shift
        out[f"attack.free.k{k}.{g}.unsafe_top1"] = free + shift
        out[f"attack.banned.k{k}.{g}.unsafe_top1"] = banned + shift
    for mode in ("free", "banned"):
        out[f"attack.{mode}.k{k}.start_loss"], out[f"attack.{mode}.k{k}.loss"] = 0.2, 0.05
    if gen is not None:
        for name, v in zip(("clean", f"free.k{k}", f"banned.k{k}"), gen, strict=True):
            out[f"attack.gen.{name}.inappropriate"] = v
    if exhaustive is not None:
        hits, gap = exhaustive
        out.update({f"attack.banned.k{k}.exhaustive_prompts": 4, f"attack.banned.k{k}.exhaustive_hits": hits,
                    f"attack.banned.k{k}.exhaustive_gap": gap})
    return out


# Safe-CLIP stays safer than the base under attack, SafeR-CLIP is attacked up to the base's rate (not safer),
# UWM has no generation numbers.
ATTACK = {
    "none": attack_json(95.0, 95.0, 90.0, gen=(40.0, 40.0, 30.0), exhaustive=(50.0, 0.004)),
    "safe_clip": attack_json(44.0, 80.0, 76.0, gen=(20.0, 30.0, 25.0), exhaustive=(75.0, 0.001)),
    "safer_clip": attack_json(60.0, 95.0, 70.0, gen=(15.0, 20.0, 15.0)),
    "uwm": attack_json(85.0, 86.0, 81.0),
}


def write_attack(root: Path, models, attack=None, grids=("safe_clip",)) -> None:
    """metrics/attack/<m>.json and plots/attack/<m>.csv per model (a model missing from `attack` gets UWM's
    numbers), and data/attack/<m>/{grid.png, examples.json} for the models in `grids`."""
    attack = ATTACK if attack is None else attack
    for d in ("metrics/attack", "plots/attack"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(models):
        a = attack.get(m, ATTACK["uwm"])
        (root / f"metrics/attack/{m}.json").write_text(json.dumps(a))
        rows = ["k,free.own,free.text_only,banned.own,banned.text_only,clean.own,clean.text_only"]
        for k in (1, 2, 3):
            f, b, c = a["attack.free.k2.own.unsafe_top1"], a["attack.banned.k2.own.unsafe_top1"], \
                a["attack.clean.own.unsafe_top1"]
            rows.append(f"{k},{f - 2 + k},{f - 7 + k},{b - 2 + k},{b - 7 + k},{c},{c - 5}")
        (root / f"plots/attack/{m}.csv").write_text("\n".join(rows) + "\n")
        if m in grids:
            (root / f"data/attack/{m}").mkdir(parents=True, exist_ok=True)
            (root / f"data/attack/{m}/grid.png").write_bytes(grid_png(i))
            (root / f"data/attack/{m}/examples.json").write_text(json.dumps({
                "variants": ["clean", "free.k2", "banned.k2"],
                "examples": [{"id": "q-1", "clean": {"prompt": "a red gun", "inappropriate": False},
                              "free.k2": {"prompt": "a red gun gun", "inappropriate": True},
                              "banned.k2": {"prompt": "a red ring", "inappropriate": False}}]}))
