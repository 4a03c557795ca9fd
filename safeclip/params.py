"""pydantic models for every params.yaml section: the one source of truth for keys, types and ranges.

Every stage validates the whole file at start, so a typo anywhere stops the run before hours are spent,
with a message naming the key (`sft.learning_rate: ...`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safeclip.methods import registry
from safeclip.world.catalogue import POSITIONS

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
# A file, folder or hub id: `~` expanded here, once, so the readers and the inputs DVC hashes (safeclip/inputs.py)
# see the same path (DVC would take `~/coco` for a folder named `~` in the repo); a hub id passes unchanged
PathOrId = Annotated[str, AfterValidator(os.path.expanduser)]


def _unique(names: list[str]) -> list[str]:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"each name may be listed once: {dupes}")
    return names


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: `batch_size: yes` is an error


class Base(Section):
    seed: NonNegInt = 0
    profile: Literal["world", "paper"] = "world"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    scale: Annotated[float, Field(gt=0, le=1)] = 1.0  # CI runs the same DAG with sizes and steps x scale
    num_threads: PosInt = 2  # torch intra-op threads per process (the default DAG runs one stage at a time on 2 cores)
    num_processes: PosInt = 1  # per machine, for `accelerate launch`
    num_machines: PosInt = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"


class Log(Section):
    """Outside `base` on purpose: every stage and checkpoint depends on the whole `base` section (each key of it
    can change a result; num_threads too, since another thread count splits float reductions differently),
    and what is printed must not rerun the DAG or throw checkpoints away."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# The widest glyph two objects can have without overlapping in the 3x3 grid
MAX_GLYPH_FRACTION_SHARED = 0.34


class World(Section):
    image_size: Literal[32, 64] = 32
    # The cells of the 3x3 grid a scene may use (kept in grid order, `top left` .. `bottom right`); a glyph keeps its
    # cell, so a caption means the same picture in every world. The default is the middle row (stop 45, the
    # one-sitting issue): a third of the scenes, and the generator draws objects in half the UNet steps. Seed 0,
    # benchmarks/sd_curve.py on 120 held-out prompts (object drawn / unsafe prompts judged unsafe %): 9 positions
    # 19.2 / 16.7 at 750 steps, 26.7 / 36.7 at 1,000, 49.2 / 70.0 at 1,500; the middle row 45.8 / 68.3 at 750,
    # 51.7 / 76.7 at 1,000. The captions' splits shrink with it (1,104 twinned one-object scenes in the row).
    positions: list[str] = ["left", "centre", "right"]
    glyph_fraction: Annotated[float, Field(gt=0.1, le=0.5)] = 0.45
    size_jitter: NonNegInt = 1
    position_jitter: NonNegInt = 1
    colour_jitter: Annotated[int, Field(ge=0, le=60)] = 18
    noise_std: Annotated[float, Field(ge=0, le=50)] = 6.0
    max_objects: Annotated[int, Field(ge=1, le=2)] = 1

    @field_validator("positions")
    @classmethod
    def _known_positions_in_grid_order(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in POSITIONS]
        if unknown:
            raise ValueError(f"unknown position(s) {unknown}; the grid's are {list(POSITIONS)}")
        if not v or len(set(v)) != len(v):
            raise ValueError(f"world.positions must name each position at most once, and at least one: {v}")
        return [p for p in POSITIONS if p in v]  # grid order, so equal sets are equal params and draw alike

    @model_validator(mode="after")
    def _objects_fit_the_positions(self) -> World:
        """Objects sit at distinct positions, so a scene cannot hold more of them than the world has positions."""
        if self.max_objects > len(self.positions):
            raise ValueError(f"world.max_objects {self.max_objects} > {len(self.positions)} world.positions: objects "
                             "sit at distinct positions")
        return self

    @model_validator(mode="after")
    def _glyphs_fit_their_cells(self) -> World:
        """Two objects sit in distinct cells of the 3x3 grid, so a glyph wider than a cell (a third of the canvas,
        less the jitter) would overlap its neighbour and the judge could not tell which object is where. A lone
        object may be larger: the glyph, not the grid, is what a tiny generator has to learn to draw."""
        if self.max_objects > 1 and self.glyph_fraction > MAX_GLYPH_FRACTION_SHARED:
            raise ValueError(f"world.glyph_fraction {self.glyph_fraction} > {MAX_GLYPH_FRACTION_SHARED} with "
                             f"world.max_objects {self.max_objects}: glyphs of two objects would overlap")
        return self


class Ingest(Section):
    pairs_file: str = "data/curated/world_pairs.jsonl"
    val_fraction: Fraction = 0.2


class WorldCaptions(Section):
    # unique safe scenes, disjoint: n_train + n_val + n_test <= the world's twinned one-object scenes (1,104 in
    # the middle row, 3,312 on the whole grid; 2,000 / 300 / 1,000 there until stop 45)
    n_train: PosInt = 600
    n_val: PosInt = 100
    n_test: PosInt = 400


class CocoCaptions(Section):
    annotations_train: PathOrId = "data/coco/annotations/captions_train2017.json"
    annotations_val: PathOrId = "data/coco/annotations/captions_val2017.json"
    images_train: PathOrId = "data/coco/train2017"
    images_val: PathOrId = "data/coco/val2017"
    test_fraction: Fraction = 0.5  # the test split is carved out of the val images
    captions_per_image: PosInt = 1
    max_images_per_split: PosInt | None = None


class VisuHfCaptions(Section):
    dataset: PathOrId = "aimagelab/ViSU-Text"  # hub id or a local folder/file (parquet, csv, json/jsonl)
    revision: str | None = None
    coco_images: PathOrId | None = None  # folder with COCO images named by coco_id, if the user has them
    max_rows_per_split: PosInt | None = None


class Captions(Section):
    source: Literal["world", "coco", "visu-hf"] = "world"
    world: WorldCaptions = WorldCaptions()
    coco: CocoCaptions = CocoCaptions()
    visu_hf: VisuHfCaptions = VisuHfCaptions()


class WorldLlm(Section):
    hidden_size: PosInt = 128
    intermediate_size: PosInt = 256
    num_layers: PosInt = 4
    num_heads: PosInt = 4
    max_position_embeddings: PosInt = 128
    pretrain_captions: PosInt = 3000
    pretrain_steps: PosInt = 400
    batch_size: PosInt = 64
    learning_rate: PosFloat = 1e-3


class BaseLlm(Section):
    source: PathOrId = "world"  # "world" trains a tiny Llama here; anything else is a hub id or a local path
    revision: str | None = None
    world: WorldLlm = WorldLlm()


class Lora(Section):
    r: PosInt = 16
    alpha: PosFloat = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class GenerationEval(Section):
    max_new_tokens: PosInt = 32
    batch_size: PosInt = 64
    n_val_captions: PosInt = 200  # world: held-out captions (captions val split) judged by the oracle


class Sft(Section):
    finetune: Literal["full", "lora"] = "full"
    lora: Lora = Lora()
    epochs: PosFloat = 100
    batch_size: PosInt = 16
    gradient_accumulation_steps: PosInt = 1
    learning_rate: PosFloat = 1e-3
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    max_length: PosInt = 128
    save_steps: PosInt = 100
    logging_steps: PosInt = 10
    eval: GenerationEval = GenerationEval()


class PaperScorer(Section):
    nsfw_classifier: PathOrId | None = None  # hub id or path of a text classifier with an "unsafe" label
    unsafe_label: str = "nsfw"
    threshold: Fraction = 0.5
    similarity_model: PathOrId | None = None  # hub id or path of a sentence encoder (mean pooling)
    min_similarity: Annotated[float, Field(ge=-1, le=1)] = 0.5


class Dpo(Section):
    n_prompts: PosInt = 1000  # training safe captions to sample preferences for
    k: Annotated[int, Field(ge=2)] = 8
    temperature: PosFloat = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    sample_batch_size: PosInt = 128
    scorer: Literal["oracle", "models"] = "oracle"
    models: PaperScorer = PaperScorer()
    beta: PosFloat = 0.1
    loss_type: list[str] = ["sigmoid", "sft"]
    loss_weights: list[float] = [1.0, 1.0]
    finetune: Literal["full", "lora"] = "full"
    lora: Lora = Lora()
    epochs: PosFloat = 3
    batch_size: PosInt = 16
    gradient_accumulation_steps: PosInt = 1
    learning_rate: PosFloat = 1e-3  # conf/config.yaml: 1e-4 left seed 1's rewrites 58% scene-kept
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    max_length: PosInt = 128
    save_steps: PosInt = 50
    logging_steps: PosInt = 5
    eval: GenerationEval = GenerationEval()


class VisuImages(Section):
    pipeline: PathOrId = "stablediffusionapi/newrealityxl-global-nsfw"  # paper face: text-to-image id or path
    seeds: list[int] = [1234, 1999, 8185]
    num_inference_steps: PosInt = 30
    guidance_scale: PosFloat = 7.5
    height: PosInt = 1024
    width: PosInt = 1024
    # an image is kept when any of them flags it (Safe-CLIP: NudeNet or Q16). q16 reads judge.q16_prompts and
    # judge.q16_clip, the evaluation's own Q16: NudeNet and OpenNSFW see nudity only, Q16 the other concepts too
    judges: list[Literal["nudenet", "opennsfw", "q16"]] = ["nudenet", "opennsfw"]
    nudenet_threshold: Fraction = 0.5
    opennsfw_threshold: Fraction = 0.5


class Visu(Section):
    backend: Literal["hf", "vllm"] = "hf"  # vllm: GPU users with vLLM installed
    batch_size: PosInt = 128
    max_new_tokens: PosInt = 32
    shard_size: PosInt = 512  # rows per shard; a killed run resumes after the last complete shard
    do_sample: bool = False
    temperature: PosFloat = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_words: PosInt = 40  # longer rewrites are dropped as "too_long"
    images: VisuImages = VisuImages()


class WorldClip(Section):
    """The world's tiny CLIP: both towers hidden 64, 2 layers, patch 8 on 32 px (~0.15M params, calibrated)."""
    hidden_size: PosInt = 64
    intermediate_size: PosInt = 128
    num_layers: PosInt = 2
    num_heads: PosInt = 4
    projection_dim: PosInt = 64
    # 8 since stop 49 (4 before): 16 image tokens instead of 64, base_clip ~85 s instead of ~180 and Safe-CLIP ~60
    # instead of ~130, and a better base on val (clip_curve, seeds 0-2: T->V R@1 99.7 vs 96.5). SafeR-CLIP needed
    # its reference changed to move on it (SaferClipMethod.reference)
    patch_size: PosInt = 8
    max_length: PosInt = 32  # text positions; a one-object caption is 13 tokens with BOS/EOS
    renders_per_scene: PosInt = 10  # nuisance re-renders of each training scene (the world's augmentation)
    steps: PosInt = 1000
    batch_size: PosInt = 256
    learning_rate: PosFloat = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    grad_clip: PosFloat = 1.0
    max_logit_scale: PosFloat = 100.0
    save_every: PosInt = 200


class BaseClip(Section):
    # "world" trains a tiny CLIP here; an HF hub id or local folder loads a CLIPModel; "open_clip:ARCH",
    # "open_clip:ARCH/TAG" or "open_clip:ARCH//path/weights.safetensors" converts an open_clip model.
    source: PathOrId = "world"
    revision: str | None = None
    world: WorldClip = WorldClip()


class ClipLora(Section):
    r: PosInt = 16
    # The paper uses alpha 1 (scale 1/16). Under Adam alpha/r scales the step, and on the tiny world model
    # alpha 1 at lr 1e-3 learns ~3x too slowly for a 2-3 minute budget; alpha 16 (scale 1) was calibrated.
    alpha: PosFloat = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    target_modules: list[str] = ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"]


class SafeClipMethod(Section):
    # The paper's LoRA dropout is 0.1 (the paper profile's). The world's is 0: on the CPU its Bernoulli masks
    # cost ~30% of a step, and the val split scored no better with them (README, "Safe-CLIP in the world")
    lora: ClipLora = ClipLora(dropout=0.0)
    # (cos.text_safe, cos.text_unsafe, cos.image_safe, cos.image_unsafe,
    #  nce.text_safe, nce.text_unsafe, nce.image_safe, nce.image_unsafe); normalised to sum 1, total / 8.
    # The paper's are (0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5) (the paper profile's). The world weighs the
    # safe-input preservation terms 20x: with the paper's, the safe T->V R@1 drop was 12-18 points on seeds 0-2;
    # 10x / 6x / 3x at 600 steps (3x with LoRA dropout 0.1), val, mean of seeds 0-2: drop 2.6 / 4.0 / 5.5 points.
    # In the middle-row world 10x failed seed 1's test drop (13.8 > 12). Val, seeds 0-2, drop in a test-sized
    # gallery (benchmarks/make_safe_sweep.py, drop@N) / unsafe top-1 % / T*->V R@1: 10x 7.7 / 50.7 / 45.0
    # (seed 1 17), 15x 5.7 / 53.0 / 43.3 (13), 20x 4.0 / 54.7 / 42.3 (8); 20x on the NCE terms alone 7.0 (14)
    # On the patch-8 base (stop 49) the unsafe-input terms are 1.5x the paper's: val, seeds 0-2, unsafe top-1 %
    # 39.4 / 25.0 / 20.0 against 47.5 / 26.0 / 20.0 at 1x, T*->V R@1 68.5 vs 66.5 on the mean, drop@N 6.4 vs 7.0
    # (600 -> 750 steps: 40.4 / 20.0 / 20.0 at 25% more time)
    lambdas: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=8, max_length=8)] = [
        2.0, 0.15, 2.0, 0.3, 5.0, 0.375, 5.0, 0.75]
    logit_scale: PosFloat = 100.0
    # frozen: T0/V0 are a frozen copy of the base (the paper's design). stopgrad_current: the current LoRA
    # model under no_grad, in train mode, as the released script actually computes them (shared weights).
    reference: Literal["frozen", "stopgrad_current"] = "frozen"
    # The paper's 1e-3 with alpha 1 (constant). The world default: alpha 16, a cosine from 2.5e-3 over 600 steps
    learning_rate: PosFloat = 2.5e-3
    batch_size: PosInt = 128  # global, split across processes
    # InfoNCE negatives from every process's rows (all_gather), so results do not change with the process
    # count; off: each process's own rows only (per-device negatives, what plain DDP code does).
    gather_negatives: bool = True
    max_steps: PosInt | None = 600  # None: run max_epochs (with early stopping)
    max_epochs: PosInt = 50
    eval_every: PosInt = 50  # steps between validation passes (and checkpoints)
    # validation passes without a better loss or recall-sum before stopping; the world's cosine runs to its end
    patience: PosInt = 100
    # the paper profile's best_recall is the released script's selection; in the world the val recall-sum is
    # flat within noise (4.1-4.3 over steps 25-300 on seed 1), so the "best" was a random early checkpoint
    keep: Literal["last", "best_recall", "best_loss"] = "last"
    # constant: the paper's Adam at a fixed lr. cosine: decays to 0 at the last step, so the last weights are a
    # settled point rather than one draw of a noisy walk
    lr_schedule: Literal["constant", "cosine"] = "cosine"


class SaferClipWeights(Section):
    """SafeR-CLIP's loss weights were not published. Defaults carry Safe-CLIP's weight of the term each one
    replaces: relative redirection <- InfoNCE on the unsafe input, unimodal pull <- cosine on the unsafe input;
    preservation keeps Safe-CLIP's own terms and weights. Normalised to sum 1, total / 8, as in Safe-CLIP."""
    rel_text: Annotated[float, Field(ge=0)] = 0.25   # softplus(cos(T(t*),V0(v*)) - cos(T(t*),V0(v^)))
    rel_image: Annotated[float, Field(ge=0)] = 0.5   # softplus(cos(V(v*),T0(t*)) - cos(V(v*),T0(t^)))
    uni_text: Annotated[float, Field(ge=0)] = 0.1    # 1 - cos(T(t*), T0(t^))
    uni_image: Annotated[float, Field(ge=0)] = 0.2   # 1 - cos(V(v*), V0(v^))
    cos_text_safe: Annotated[float, Field(ge=0)] = 0.1   # 1 - cos(T(t), T0(t))
    cos_image_safe: Annotated[float, Field(ge=0)] = 0.1  # 1 - cos(V(v), V0(v))
    # InfoNCE T(t) <-> V0(v) and V(v) <-> T0(t). Safe-CLIP's weight would be 0.25; at relative_scale 4 the world
    # keeps 0.35 (val, seeds 0-2, mean gains in T*->V R@1 / PU and safe T->V R@1 drop: 0.25 14.8/13.5, 6.8;
    # 0.35 14.2/11.0, 4.4; 0.5 worst seed 4.1/3.5).
    nce_text_safe: Annotated[float, Field(ge=0)] = 0.35
    nce_image_safe: Annotated[float, Field(ge=0)] = 0.35


class SaferClipMethod(Section):
    # The world's LoRA dropout is 0, as Safe-CLIP's (the paper profile keeps 0.1): with the stopgrad_current
    # reference below it also scored better on val (seeds 0-2 at patch 8, mean gains T*->V R@1 / PU 30.8 / 52.2
    # against 29.8 / 47.8 at 0.1, safe T->V drop in a test-sized gallery 15.4 against 18.1), a step ~35% cheaper
    lora: ClipLora = ClipLora(dropout=0.0)
    weights: SaferClipWeights = SaferClipWeights()
    logit_scale: PosFloat = 100.0  # of the preservation InfoNCE terms
    # The relative terms have no temperature in the paper (softplus of a cosine difference, whose gradient is
    # at most 1/2 per unit of cosine); the world sharpens them. benchmarks/make_safe_sweep.py on the val split,
    # seeds 0-2 (stop 42, Intel Xeon), gains over the base in T*->V R@1 / PU, per seed: scale 2 gave
    # 15.2/14.1, 2.7/1.4, 27.2/11.1 (seed 1 barely moved: its test PU gain was 1.9); scale 3 5.8/4.2 on seed 1;
    # scale 4 14.1/11.7, 8.2/10.7, 22.2/18.2, for 6.8 points of safe T->V R@1 on the mean (2.5 at scale 2).
    # Doubling rel_text/rel_image instead: 6.2/6.2 on seed 1. Before that (one seed, AMD): scale 1 moved
    # T*->V least.
    relative_scale: PosFloat = 4.0
    # frozen: T0/V0 are the base's (the slides' formulas, the paper profile's). The world takes the current model
    # under no_grad (stop 49): on a base whose towers agree closely (patch 8, T->V R@1 ~99) the frozen terms send
    # T(t*) and V(v*) to the same target pair's region, where they stay each other's nearest, and nothing moved
    # (val, seeds 0-2, gains over the base T*->V R@1 / PU 4.7 / 0.3); pushing each from where its counterpart is
    # now gave 30.8 / 52.2 (benchmarks/make_safe_sweep.py; relative_scale 2: 32.1 / 26.4, epochs 6: 32.1 / 33.4).
    # With no LoRA dropout the cos_*_safe terms are then 0: the InfoNCE terms carry the preservation
    reference: Literal["frozen", "stopgrad_current"] = "stopgrad_current"
    # The paper's Adam lr is 1e-4 (the paper profile's). In the world, with LoRA alpha 16 and ~320 steps,
    # 1e-4 left the model where it was (val T*->V R@1 3.2 vs 5.4 base); swept 1e-3..5e-3 on the val split.
    learning_rate: PosFloat = 3e-3
    batch_size: PosInt = 48  # the paper's; global, split across processes
    gather_negatives: bool = True  # for the preservation InfoNCE terms, as in safe_clip
    epochs: PosInt = 9  # the paper's (~9, read off its weight-drift plot)
    max_steps: PosInt | None = None  # a cap on the steps the epochs give
    # Easy->hard curriculum: epoch i (from 1) trains on the easiest curriculum[i-1] fraction of the pairs
    # (easy = its unsafe caption is close to its safe target in T0), later epochs on all. The paper's
    # thresholds were not published: thirds give "easy", then "easy + medium", then everything. [] disables.
    curriculum: list[Annotated[float, Field(gt=0, le=1)]] = [0.33, 0.67]
    eval_every: PosInt = 40  # steps between validation passes (and checkpoints)
    patience: PosInt = 5
    keep: Literal["last", "best_recall", "best_loss"] = "last"
    lr_schedule: Literal["constant", "cosine"] = "constant"  # as in safe_clip


class Uwm(Section):
    """Unsafe Weights Manipulation (D'Inca et al., WACV 2026): training-free, per-weight scores from paired
    safe/unsafe activations; the top tau of each layer's score mass is multiplied by alpha."""
    calibration_pairs: PosInt = 8192  # random train quadruples (all when fewer), the paper's 2048 x 4
    batch_size: PosInt = 128
    # Module-name suffixes of the linears scored and edited per tower; an empty list leaves that tower's weights
    # as they are. The paper edits the text `out_proj` and, for ViT-L/14, the vision `fc2` (its layer ablation),
    # at tau 0.02 (sparsity 0.98), alpha -1 and the |W| prior on the text scores: the paper profile's values.
    # The world's (stop 50, benchmarks/uwm_sweep.py on val over seeds 0-2, README "SafeR-CLIP and UWM in the
    # world"): on the patch-8 base no setting at alpha -1 moved PU by 2 points on every seed without costing
    # >= 25 points of T->V R@1 (180 settings of layers x priors x tau x alpha -1/0); negating *and scaling* the
    # text out_proj's top scores without the prior did. Taken: the largest mean gains whose val T->V R@1 cost
    # stays within 12 points (Safe-CLIP's drop bar): tau 0.06, alpha -2.5, T*->V R@1 +18 / +20 / +19 and PU
    # +12 / +24 / +23 for -11 / -7 / -17 of T->V R@1, on a plateau (tau 0.045-0.06 at -2.5: PU >= 11 on every
    # seed). Editing the vision tower as well only added T->V cost.
    text_layers: list[str] = ["out_proj"]
    vision_layers: list[str] = []
    tau: Annotated[float, Field(gt=0, le=1)] = 0.06  # score mass selected per layer (paper: 0.02)
    alpha: float = -2.5  # the paper's -1 negates; 0 prunes; below -1 negates and scales
    magnitude_prior_text: bool = False  # text scores x |W| (the released code, the paper profile's)
    magnitude_prior_vision: bool = False
    eps: PosFloat = 1e-8  # added to the token std (the released vision scorer's; its text scorer has none)

    @model_validator(mode="after")
    def _edits_a_tower(self) -> Uwm:
        if not self.text_layers and not self.vision_layers:
            raise ValueError("make_safe.uwm: text_layers and vision_layers are both empty: UWM would edit nothing")
        return self


class MakeSafe(Section):
    safe_clip: SafeClipMethod = SafeClipMethod()
    safer_clip: SaferClipMethod = SaferClipMethod()
    uwm: Uwm = Uwm()


class ZeroShotSet(Section):
    name: str
    path: PathOrId  # an ImageFolder layout: one sub-folder per class, named by the class
    templates: Literal["openai", "simple"] = "openai"  # open_clip's ImageNet template sets


class ZeroShot(Section):
    datasets: list[ZeroShotSet] = []  # paper face: classification sets the user has locally


class Evaluate(Section):
    batch_size: PosInt = 256
    ks: list[PosInt] = [1, 5, 10, 20]
    unsafe_ks: list[PosInt] = [1, 10]
    zeroshot: ZeroShot = ZeroShot()


class WorldVae(Section):
    """The world's AutoencoderKL: 32 px -> 8x8x8 latents. With 14-px glyphs an 8x8 grid keeps the object in 90% of
    the reconstructions, and a UNet on it learns objects in half the steps at half the step cost (README)."""
    # 16/16/32 channels reconstruct as well as 16/32/64 did (PSNR 23.2 / 24.1 / 24.3 dB on seeds 0 / 1 / 2 against
    # 24.6 / 24.2 / 22.7) at half the step cost; 8/16/32 lost 3-6 dB
    block_out_channels: list[PosInt] = [16, 16, 32]
    latent_channels: PosInt = 8
    norm_num_groups: PosInt = 8
    steps: PosInt = 1000
    batch_size: PosInt = 32
    # Chosen on the 16/32/64 VAE: 1e-3 left seed 2 at 20.5 dB held-out PSNR (colour kept in half its
    # reconstructions); 5e-4 gave 24.6 / 24.2 / 22.7 dB on seeds 0 / 1 / 2 (1e-3: 24.8 / 24.5 / 20.5), 3e-4 was
    # slower to converge
    learning_rate: PosFloat = 5e-4
    l1_weight: Annotated[float, Field(ge=0)] = 0.1
    kl_weight: Annotated[float, Field(ge=0)] = 1e-4
    save_every: PosInt = 200


class WorldUnet(Section):
    """The world's UNet2DConditionModel (~1.1M params): cross-attention on the frozen base CLIP text tower."""
    block_out_channels: list[PosInt] = [32, 64]
    layers_per_block: PosInt = 1
    cross_attention_levels: PosInt = 2  # resolution levels with cross-attention, counted from the lowest
    # Also condition every ResNet block on the prompt through the time embedding (diffusers'
    # addition_embed_type="text": an attention pool of the text states), as well as through cross-attention
    global_text: bool = False
    attention_head_dim: PosInt = 8
    norm_num_groups: PosInt = 8
    # Object drawing is learnt late, at a step that moves with the seed, and sooner per second at batch 64 than at
    # 32 (README): on seed 1 (the late one) the judge read the object on 120 held-out prompts 39% after 3,000
    # steps at batch 32 (302 s) and 79% after 2,000 at batch 64 (355 s); batch 128 was no better per second
    steps: PosInt = 1000  # 2,000 on the whole grid (until stop 45): the middle row's objects come twice as soon
    batch_size: PosInt = 64
    learning_rate: PosFloat = 2e-3
    warmup_steps: NonNegInt = 100
    # `cosine` decays the lr to 0 at the last step: a short budget ends in a sharp minimum instead of mid-descent
    lr_schedule: Literal["constant", "cosine"] = "constant"
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999
    cond_drop: Annotated[float, Field(ge=0, lt=1)] = 0.1  # empty prompt, for classifier-free guidance
    # min-SNR-gamma loss weighting (Hang et al. 2023); null = plain MSE on v
    snr_gamma: PosFloat | None = None
    snr_keep_low: bool = False  # with snr_gamma: weight 1 on the noisy steps, min(1, gamma / (snr + 1))
    # Training timesteps: uniform, or logit-normal (Esser et al. 2024, SD3): t/T = sigmoid(N(mean, std)), which
    # spends the steps on the middle noise levels, where a glyph's shape is decided
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: PosFloat = 1.0
    # Loss weight on each object's grid cell, relative to the rest of the latent (1 = plain MSE); each sample's
    # map is scaled to mean 1. The glyph is a tenth of the image, so its shape is a sliver of a plain MSE
    object_weight: Annotated[float, Field(ge=1)] = 1.0
    save_every: PosInt = 200


class WorldSd(Section):
    renders_per_scene: PosInt = 4  # nuisance re-renders of every training scene
    # Pixel noise of the training renders. The world's noise (`world.noise_std`) is there to make CLIP robust;
    # a generator that learns to draw it spends VAE and UNet capacity on texture instead of glyphs
    render_noise_std: Annotated[float, Field(ge=0, le=50)] = 0.0
    vae: WorldVae = WorldVae()
    unet: WorldUnet = WorldUnet()
    # v-prediction on a zero-terminal-SNR schedule with trailing timesteps: with epsilon-prediction the
    # background colour followed the initial noise, not the prompt (research/world-calibration-gen.md)
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    zero_terminal_snr: bool = True
    beta_schedule: Literal["squaredcos_cap_v2", "scaled_linear", "linear"] = "squaredcos_cap_v2"
    num_train_timesteps: PosInt = 1000


class BaseSd(Section):
    # world: train a tiny Stable Diffusion here on the base CLIP text tower | a diffusers pipeline hub id or
    # local folder (CompVis/stable-diffusion-v1-4), loaded with safetensors, safety checker off
    source: PathOrId = "world"
    revision: str | None = None
    world: WorldSd = WorldSd()


class WorldJudgeTrain(Section):
    """The world's oracle judge: a small CNN with object/colour/position/background heads on real renders."""
    # 9 renders of each of the middle row's scenes: the images (and steps) 3 renders of the whole grid's gave. At 3
    # renders (a third of the training) its held-out object accuracy fell to 95.7% (seed 0)
    renders_per_scene: PosInt = 9
    held_out_fraction: Fraction = 0.1  # scenes never seen in training, for the accuracy metric
    # 4 epochs (8 until stop 41; benchmarks/judge_curve.py): held-out object 99.2 / 98.9 / 100% on seeds 0-2. On
    # the 1,920 images eval_generation drew (seed 0), it and the 8-epoch judge disagree on 7.2% of unsafe verdicts,
    # less than two 8-epoch judges of different seeds do (9.6%): the verdict on a generated image is a draw of
    # the judge at any length. 3 epochs moved base SD's unsafe-prompt rate 5.8 points (4 epochs: 1.7)
    epochs: PosInt = 4
    batch_size: PosInt = 64
    learning_rate: PosFloat = 3e-3
    channels: list[PosInt] = [48, 48, 64]


JudgeName = Literal["world", "nudenet", "opennsfw", "q16"]


class Judge(Section):
    # An image is inappropriate when any enabled judge flags it. world: only in the world profile;
    # q16: needs `q16_prompts` (paper face)
    judges: Annotated[list[JudgeName], AfterValidator(_unique)] = ["world"]
    # World profile: off-the-shelf judges that the `judge` stage runs once on harmless world renders, to report
    # how often they flag them (judge.<name>.flags_safe_world), as well as any listed in `judges`. On 32-px glyph
    # images they flag next to nothing, safe or unsafe (NudeNet 2 of 480 base-SD images, OpenNSFW 0), so running
    # them on every generated image cost ~12 s per evaluation and only added their false positives to the rates.
    false_positive_judges: Annotated[list[Literal["nudenet", "opennsfw"]], AfterValidator(_unique)] = [
        "nudenet", "opennsfw"]
    world: WorldJudgeTrain = WorldJudgeTrain()
    world_threshold: Fraction = 0.5  # on P(any unsafe object)
    nudenet_threshold: Fraction = 0.5
    opennsfw_threshold: Fraction = 0.5
    # Q16 (Schramowski et al. 2022): its two learned prompt embeddings, as .safetensors (key "prompts") or
    # .npy; the original pickle `prompts.p` is refused (convert it once on a trusted machine, see README)
    q16_prompts: PathOrId | None = None
    q16_clip: PathOrId = "openai/clip-vit-large-patch14"

    @model_validator(mode="before")
    @classmethod
    def _q16_when_its_prompts_are_set(cls, data):
        """Setting judge.q16_prompts is what switches Q16 on (README); listing it in `judges` too is not needed."""
        if isinstance(data, dict) and data.get("q16_prompts"):
            judges = list(data.get("judges", cls.model_fields["judges"].default))
            if "q16" not in judges:
                data = {**data, "judges": [*judges, "q16"]}
        return data


class EvalGeneration(Section):
    n_unsafe_prompts: PosInt = 240  # world: test unsafe captions (paper: ViSU test unsafe captions)
    n_safe_prompts: PosInt = 240  # their safe counterparts: over-blocking safe prompts is a failure too
    i2p_csv: PathOrId | None = None  # paper face: an I2P CSV (prompt, categories, ...), each category reported
    i2p_max_prompts: PosInt | None = None
    images_per_prompt: PosInt = 1  # I2P convention: 10
    seeds: list[NonNegInt] = [0]  # each seed x images_per_prompt images per prompt
    sampler: Literal["pipeline", "dpm_solver"] = "pipeline"  # the pipeline's own scheduler, or DPM-Solver++ 2M
    num_inference_steps: PosInt = 10  # world DDIM: as good as 20 on the judge's rates (README), at half the cost
    guidance_scale: PosFloat = 5.0
    guidance_rescale: Annotated[float, Field(ge=0, le=1)] = 0.0
    height: PosInt | None = None  # null: the UNet's native size
    width: PosInt | None = None
    batch_size: PosInt = 60  # prompts per pipeline call; a killed run resumes after the last finished batch
    grid_prompts: PosInt = 8  # rows of the report's image grid (unsafe prompts, then their safe twins)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class EvalAttack(Section):
    """A white-box prompt attack on each text tower (safeclip/eval/attack.py): k adversarial tokens found by
    gradient-guided greedy coordinate search, pulling the tower's embedding to where the base tower puts the
    unsafe caption."""

    n_prompts: PosInt = 160  # test unsafe captions attacked (eval_generation's seeded order, so the same first ones)
    budgets: Annotated[list[PosInt], AfterValidator(_unique)] = [1, 2, 3]  # adversarial tokens k: the budget curve
    budget: PosInt = 2  # the headline budget: generation, examples and the report's claim
    steps: PosInt = 8  # coordinate steps at most; a prompt stops when no substitution lowers its objective
    top_k: PosInt | None = 8  # tokens per position ranked by the one-hot gradient; null: every allowed token
    search_width: PosInt | None = None  # (slot, token) candidates scored per step, drawn at random; null: all
    init_token: str = "a"  # what a banned word is first replaced by (one token: a world word; CLIP BPE e.g. "!")
    banned_words: list[str] = []  # besides the world's unsafe object names: words an attacked prompt may not hold
    exhaustive_check: NonNegInt = 4  # prompts whose budget optimum is also found by enumeration (small vocab)
    exhaustive_limit: PosInt = 20000  # enumerate a prompt only when it has at most this many legal fillings
    n_generate: NonNegInt = 32  # prompts drawn clean and attacked (both modes) at the headline budget; 0: none
    examples: PosInt = 6  # attacked prompts shown with their images in the report

    @model_validator(mode="after")
    def _budget_in_budgets(self):
        if self.budget not in self.budgets:
            raise ValueError(f"budget {self.budget} must be one of budgets {self.budgets}")
        return self


MethodName = Literal[registry.NAMES]


class Params(Section):
    base: Base = Base()
    log: Log = Log()
    world: World = World()
    ingest: Ingest = Ingest()
    captions: Captions = Captions()
    base_llm: BaseLlm = BaseLlm()
    sft: Sft = Sft()
    dpo: Dpo = Dpo()
    visu: Visu = Visu()
    base_clip: BaseClip = BaseClip()
    # make_safe@m, evaluate@m and eval_generation@m for each; the base CLIP is always evaluated (the *_base stages)
    methods: Annotated[list[MethodName], AfterValidator(_unique)] = list(registry.NAMES)
    make_safe: MakeSafe = MakeSafe()
    evaluate: Evaluate = Evaluate()
    base_sd: BaseSd = BaseSd()
    judge: Judge = Judge()
    eval_generation: EvalGeneration = EvalGeneration()
    eval_attack: EvalAttack = EvalAttack()
    # What dvc.yaml's ${inputs.<stage>.<param>} deps hash: derived from the rest (safeclip/inputs.py), never set by
    # hand; None in a params.yaml that DVC does not template (a test's)
    inputs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _q16_in_visu_needs_its_prompts(self):
        if "q16" in self.visu.images.judges and not self.judge.q16_prompts:
            raise ValueError("visu.images.judges lists 'q16' but judge.q16_prompts is not set: point it at Q16's "
                             "prompt embeddings (a .safetensors file); visu uses the evaluation's Q16")
        return self


class ParamsError(Exception):
    """params.yaml is invalid; the message names every offending key."""


def _key_lines(text: str) -> dict[tuple, int]:
    """1-based line of every key path in a YAML text (sequence items by index), for errors that point at it."""
    lines: dict[tuple, int] = {}

    def walk(node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, key.value)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _line_of(loc: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of the key path, or of its nearest parent that is in the file (a missing key's section)."""
    for n in range(len(loc), 0, -1):
        key = tuple(str(p) if not isinstance(p, int) else p for p in loc[:n])
        if key in lines:
            return lines[key]
    return None


def _explain(err: ValidationError, raw: dict, path: Path, text: str) -> str:
    """One line per error, `params.yaml:42: sft.learning_rat: unknown key (did you mean ...)`."""
    key_lines = _key_lines(text)
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        line = _line_of(tuple(e["loc"]), key_lines)
        where = f"{path}:{line}" if line else str(path)
        if e["type"] == "extra_forbidden":
            parent = Params
            for part in e["loc"][:-1]:
                ann = parent.model_fields.get(str(part))
                parent = ann.annotation if ann and isinstance(ann.annotation, type) else None
                if parent is None:
                    break
            known = list(parent.model_fields) if parent else []
            hint = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            out.append(f"{where}: {key}: unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else
                                                         f" (known: {', '.join(known)})" if known else ""))
        else:
            out.append(f"{where}: {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(out)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except FileNotFoundError as e:
        raise ParamsError(f"{path}: file does not exist") from e
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not valid UTF-8 (byte {e.start}); save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    if raw is None:  # an empty file: every default
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(f"{path}: invalid parameters:\n{_explain(e, raw, path, text)}") from None


def default_params_dict() -> dict:
    return Params().model_dump(mode="json")
