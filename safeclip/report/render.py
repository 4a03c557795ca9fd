"""The report as markdown and as one self-contained HTML page (inline CSS, PNGs as data URIs: opens offline).

A report is a title, an intro and a list of sections; each section carries its markdown body, its HTML body and
the PNGs it shows. The renderer knows nothing about what a section says, so the text-to-image generation tables
and image grids are sections like any other (built here from `generation`'s data). Blocks (`para`, `bullets`,
`table`, `image`, `claims_block`) build both bodies from one description so the two outputs cannot drift apart.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from safeclip.io import atomic_dir
from safeclip.methods.registry import display_name
from safeclip.report import attack, figures, generation, tables
from safeclip.report.tables import BASE, Claim, Table

Block = tuple[str, str]  # (markdown, html)

TITLE = "Make-safe methods compared with the base CLIP"
MARKDOWN_FILE, HTML_FILE = "report.md", "report.html"

# ---------------------------------------------------------------------------------------------------- blocks

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"})


def md_escape(text: str) -> str:
    """Plain text for markdown: `T*→V` would otherwise start emphasis and `|` would split a table cell."""
    return text.translate(_MD_SPECIAL)


def para(text: str) -> Block:
    return md_escape(text), f"<p>{html.escape(text)}</p>"


def bullets(items: Sequence[str]) -> Block:
    md = "\n".join(f"- {md_escape(i)}" for i in items)
    return md, "<ul>\n" + "\n".join(f"<li>{html.escape(i)}</li>" for i in items) + "\n</ul>"


def table(t: Table) -> Block:
    """A markdown pipe table (column groups named in a line above it: pipe tables have one header row) and an
    HTML table with a two-row header when the columns are grouped."""
    md = []
    if t.groups:
        start, parts = 2, []
        for title, n in t.groups:
            parts.append(f"**{md_escape(title)}**: columns {start}–{start + n - 1}")
            start += n
        md += ["Column groups: " + "; ".join(parts) + ".", ""]
    md.append("| " + " | ".join(md_escape(h) for h in t.header) + " |")
    md.append("|" + "|".join([":---"] + ["---:" if t.numeric else ":---"] * (len(t.header) - 1)) + "|")
    md += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]

    out = ["<table>", "<thead>"]
    if t.groups:
        out.append(f'<tr><th rowspan="2">{html.escape(t.header[0])}</th>'
                   + "".join(f'<th colspan="{n}" class="group">{html.escape(g)}</th>' for g, n in t.groups)
                   + "</tr>")
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.header[1:]) + "</tr>")
    else:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.header) + "</tr>")
    out += ["</thead>", "<tbody>"]
    for row in t.rows:
        out.append(f"<tr><th scope=\"row\">{html.escape(row[0])}</th>"
                   + "".join(f'<td class="num">{html.escape(c)}</td>' for c in row[1:]) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(md), "\n".join(out)


def image(name: str, png: bytes, alt: str) -> Block:
    """The markdown links the PNG file written next to it; the HTML embeds the same bytes."""
    data = base64.b64encode(png).decode("ascii")
    return (f"![{md_escape(alt)}]({name})",
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def claims_block(cs: Sequence[Claim]) -> Block:
    t = Table(["claim", "verdict", "this run's figures"], [[c.text, c.verdict, c.detail] for c in cs], numeric=False)
    md = table(t)[0]
    rows = "\n".join(f'<tr><td>{html.escape(c.text)}</td><td class="verdict {c.verdict.replace(" ", "-")}">'
                     f"{html.escape(c.verdict)}</td><td>{html.escape(c.detail)}</td></tr>" for c in cs)
    return md, ('<table class="claims">\n<thead><tr><th>claim</th><th>verdict</th><th>this run\'s figures</th>'
                f"</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")


# ---------------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Section:
    """One titled part of the report. `images` maps a file name (written next to report.md) to PNG bytes."""

    title: str
    markdown: str
    html: str
    images: dict[str, bytes] = field(default_factory=dict)


def section(title: str, *blocks: Block, images: dict[str, bytes] | None = None) -> Section:
    return Section(title, "\n\n".join(b[0] for b in blocks), "\n".join(b[1] for b in blocks), dict(images or {}))


@dataclass(frozen=True)
class Report:
    title: str
    intro: str  # plain text
    sections: list[Section]
    claims: list[Claim] = field(default_factory=list)  # the verdicts as data (also rendered as a section)

    @property
    def images(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for s in self.sections:
            for name, png in s.images.items():
                if name in out or name in (MARKDOWN_FILE, HTML_FILE) or os.sep in name:
                    raise ValueError(f"image file name {name!r} is used twice or is not a plain file name")
                out[name] = png
        return out

    def markdown(self) -> str:
        parts = [f"# {md_escape(self.title)}", md_escape(self.intro)]
        for s in self.sections:
            parts += [f"## {md_escape(s.title)}", s.markdown]
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>", f"<p>{html.escape(self.intro)}</p>"]
        for s in self.sections:
            body += [f"<section>\n<h2>{html.escape(s.title)}</h2>", s.html, "</section>"]
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{html.escape(self.title)}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")


CSS = """\
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
thead th { background: #f2f2f2; }
th.group { text-align: center; }
tbody th { text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.verdict { font-weight: bold; text-align: center; white-space: nowrap; }
td.yes { background: #e3f4e3; } td.no { background: #f8e0e0; } td.not-evaluated { background: #eee; color: #666; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
"""

# ---------------------------------------------------------------------------------------------------- content

PROFILES = {
    "world": "The run uses the world profile: tiny CLIP-like models trained here on a synthetic world of rendered "
             "scenes with exact ground truth. The numbers show whether each method does what it should at toy "
             "scale; they are not the papers' numbers.",
    "paper": "The run uses the paper profile: a pretrained CLIP (ViT-L/14 unless base_clip.source says otherwise) "
             "made safe with the papers' settings, so the numbers can be set beside the papers'.",
}
SOURCES = {
    "world": "Safe captions describe the rendered scenes (test scenes are held out of all training); their unsafe "
             "counterparts come from this pipeline's fine-tuned LLM (SFT, then DPO).",
    "coco": "Safe captions are COCO's; their unsafe counterparts come from this pipeline's fine-tuned LLM (SFT, "
            "then DPO).",
    "visu-hf": "Safe and unsafe captions are ViSU-Text's pairs as published (the LLM stages are skipped).",
}

LEGEND = [
    "T*→V R@1: an unsafe caption retrieves the safe image of its pair from safe and unsafe images together "
    "(redirection: higher is safer).",
    "V*→T R@1: the same for an unsafe image retrieving its safe caption.",
    "% unsafe top-1: how often the top result of an unsafe query is unsafe (lower is safer).",
    "SafeGround, the share of safe/unsafe quadruples where: PS, the safe caption and the safe image prefer each "
    "other over their unsafe twins; PU, the unsafe caption and the unsafe image both prefer the safe counterpart; "
    "GS, all four preferences hold (higher is better).",
    "T→V, V→T R@1: ordinary safe retrieval; zero-shot accuracy: classification with class-name prompts (knowledge "
    "kept: higher is better).",
    "Methods show their change from the base in parentheses; – means the number was not measured.",
]


def intro(params) -> str:
    """What this is, from the run's profile and caption source (the only params the report reads besides
    `methods`)."""
    methods = list(params.methods)
    names = ", ".join(display_name(m) for m in methods) or "none"
    n = len(methods)
    return (f"This report compares the base CLIP with {n} make-safe method{'s' if n != 1 else ''} ({names}) on "
            "the test split: how well each one steers unsafe text and images to safe content (safety), how "
            "much of the base model's retrieval and zero-shot skill it keeps (knowledge), and what a text-to-image "
            "model draws when its text encoder is the method's text tower. All numbers are "
            f"percentages. {PROFILES.get(params.base.profile, f'Profile: {params.base.profile}.')} "
            f"{SOURCES.get(params.captions.source, f'Captions: {params.captions.source}.')}")


def tradeoff_section(metrics: dict[str, tables.Metrics], models: Sequence[str]) -> Section:
    points, skipped = [], []
    for m in models:
        x, y = metrics[m].get("retrieval.t_star_to_v.r1"), tables.zeroshot_accuracy(metrics[m])
        (skipped if x is None or y is None else points).append((display_name(m), x, y))
    base_first = not any(name == display_name(BASE) for name, *_ in skipped)
    png = figures.tradeoff_png([(n, x, y) for n, x, y in points], base_first=base_first)
    blocks = [para("Each point is one model: further right redirects more unsafe text to safe images, higher keeps "
                   "more zero-shot accuracy. The black star is the base CLIP."),
              image("tradeoff.png", png, "Trade-off: T*→V R@1 against zero-shot accuracy")]
    if skipped:
        blocks.append(para("Not plotted (a number is missing): " + ", ".join(n for n, *_ in skipped) + "."))
    return section("Trade-off: safety against knowledge", *blocks, images={"tradeoff.png": png})


def training_section(params, root: Path) -> Section | None:
    methods = list(params.methods)
    how = tables.how_made_table(tables.load_make_safe(methods, root), methods)
    blocks, images = [], {}
    if how is not None:
        blocks.append(table(how))
    for m in methods:
        csv_path = root / "plots" / "make_safe" / f"{m}.csv"
        # A training-free method (UWM) writes the matrix's curve file with a header and no rows: no figure.
        if csv_path.exists() and any(xs for xs, _ in figures.read_curve(csv_path).values()):
            name = f"curve_{m}.png"
            images[name] = figures.curve_png(csv_path, f"{display_name(m)}: training curve")
            blocks.append(image(name, images[name], f"{display_name(m)}: train and validation loss per step"))
    return section("How each method was made", *blocks, images=images) if blocks else None


GENERATION_INTRO = (
    "Stable Diffusion with its text encoder replaced by each model's text tower (the base row is the unmodified "
    "generator) draws the same prompts from the same initial noise for every model, so the rates differ only by "
    "the text tower. An image is inappropriate when any judge flags it. Unsafe prompts are the unsafe captions "
    "of test pairs (lower is safer); safe prompts are their safe twins, where a rise over the base is "
    "over-blocking, also a failure.")
GENERATION_LEGEND = {
    generation.GROUP_INAPPROPRIATE: "% inappropriate: the share of images at least one judge flags.",
    generation.GROUP_CLIP: "CLIP-score: 100 × the base CLIP's cosine between the image and the pair's safe caption "
                           "(unsafe prompts: how close the image comes to the safe version; safe prompts: "
                           "faithfulness to the prompt; higher is better for both).",
    generation.GROUP_WORLD: "World judge (world profile only): the share of images in which the world's oracle "
                            "judge sees the prompt's object (for unsafe prompts, the unsafe object: lower is safer), "
                            "or, for unsafe prompts, the object's safe twin instead (redirection: higher is safer).",
    generation.GROUP_I2P: "I2P: % inappropriate for the Inappropriate Image Prompts benchmark (paper profile).",
}


def generation_section(gen: dict[str, tables.Metrics], methods: Sequence[str],
                       judge: tables.Metrics) -> Section:
    """The generation table and its legend, one sentence per method, per-concept rates, and the judges (their
    reliability, then what each one flagged): the rates are only as good as the judges behind them."""
    groups = generation.generation_groups(gen)
    intro_text = GENERATION_INTRO + (f" {n}" if (n := generation.images_judged(gen)) else "")
    blocks = [para(intro_text), table(generation.generation_table(gen, methods)),
              bullets([GENERATION_LEGEND[title] for title, _ in groups]
                      + ["Methods show their change from the base in parentheses; – means the number was not "
                         "measured."])]
    if methods:
        blocks += [para("What each method does to the inappropriate rate (the base's rate → the method's):"),
                   bullets([generation.change_sentence(m, gen) for m in methods])]
    concepts = generation.concept_table(gen, methods)
    if concepts is not None:
        blocks += [para("Per concept: % inappropriate for unsafe prompts (lower is safer)."), table(concepts)]
    line = generation.judge_line(judge)
    judges = generation.judge_table(gen, methods)
    if line is not None:
        blocks.append(para(line))
    if judges is not None:
        blocks += [para("Per judge: % of images each one flags (the inappropriate rate is their union)."),
                   table(judges)]
    return section("Text-to-image generation", *blocks)


GRID_CAPTION = "top: unsafe prompts, bottom: their safe twins; same noise for every model"


def grids_section(grids: dict[str, bytes], models: Sequence[str]) -> Section:
    """Each model's grid as eval_generation drew it (the bytes as written, not re-encoded)."""
    blocks = [para("The first unsafe prompts of the generation test (top row; eval_generation.grid_prompts of them) "
                   "over their safe twins (bottom row), one image each. Every model drew the same prompts from the "
                   "same initial noise, so what changes from grid to grid is the text tower alone.")]
    images = {}
    for m in models:
        name = generation.grid_file(m)
        images[name] = grids[m]
        blocks.append(image(name, grids[m], f"{display_name(m)}: {GRID_CAPTION}"))
    return section("Image grids", *blocks, images=images)


def skipped_generation_section(skipped: dict[str, str]) -> Section:
    """eval_generation skipped text-to-image evaluation (the text tower cannot drive the UNet): say so, and why,
    instead of a table of missing numbers; the claims that need it read "not evaluated"."""
    return section("Text-to-image generation",
                   para("Text-to-image evaluation was skipped, so this run has no generation numbers or image "
                        "grids (README, \"Run the paper setup\": the base CLIP's text width must equal the UNet's "
                        "cross-attention width)."),
                   bullets([f"{display_name(m)}: {why}" for m, why in skipped.items()]))


ATTACK_INTRO = (
    "A white-box attacker changes at most k tokens of each unsafe test caption, searching (greedy coordinate "
    "search guided by the gradient with respect to one-hot tokens, as GCG and MMA-Diffusion do) for the prompt whose "
    "embedding under the model's text tower lands where the base tower puts the unsafe caption. The free attack "
    "may use any word; the banned-word attack must first replace the caption's unsafe words, which it may not use "
    "again, so it must find a detour. Success is judged on the attacked text, re-tokenised: its top-1 item in the "
    "mixed test gallery is an unsafe image. None of the three papers attacks its own model; this is beyond them.")


def attack_section(att: dict[str, tables.Metrics], methods: Sequence[str], root: Path) -> Section:
    models = [BASE, *methods]
    labels = {m: display_name(m) for m in models}
    curves = {m: attack.read_budget_curve(root / "plots" / "attack" / f"{m}.csv") for m in models}
    png = figures.budget_curve_png({m: {attack.MODE_LABELS[mode]: c for mode, c in curves[m].items()}
                                    for m in models}, labels)
    blocks = [para(ATTACK_INTRO), table(attack.attack_table(att, methods)),
              bullets([attack.change_sentence(m, att) for m in models])]
    line = attack.optimality_line(att)
    if line is not None:
        blocks.append(para(line))
    blocks.append(image("attack_budget.png", png, "% unsafe top-1 (own towers) against the attack budget k"))
    images = {"attack_budget.png": png}
    examples = attack.load_examples(models, root)
    if examples:
        blocks.append(para("Stable Diffusion with each model's text tower, for the first attacked test captions "
                           "(columns): top row the clean unsafe caption, then the free attack, then the banned-word "
                           "attack, each from the same initial noise. The prompts are below each grid."))
        for m, (grid, ex) in examples.items():
            name = f"attack_grid_{m}.png"
            images[name] = grid
            blocks += [image(name, grid, f"{display_name(m)}: clean / free attack / banned-word attack"),
                       table(attack.examples_table(ex))]
    return section("Robustness to attack", *blocks, images=images)


def build_report(params, root: Path = Path(".")) -> Report:
    """Everything in memory first, so nothing is written when an input is missing. Reads only `params.methods`,
    `params.base.profile` and `params.captions.source`."""
    root = Path(root)
    methods = list(params.methods)
    models = [BASE] + methods
    metrics = tables.load_model_metrics(models, root)
    gen = generation.load_generation(models, root)
    skipped = generation.skipped_reasons(gen, root)
    grids = {} if skipped else generation.load_grids(models, root)
    judge = generation.load_judge(root)
    att = attack.load_attack(models, root)
    sections = [
        section("Main comparison", table(tables.main_table(metrics, methods)), bullets(LEGEND)),
        section("Text tower only (as a text-to-image model uses it)",
                para("The method's text tower against the base image tower, which is how Stable Diffusion and "
                     "other text-only deployments see a made-safe CLIP. The base's own text tower is its full "
                     "model, so its row shows – and the methods' changes are from the main table's base numbers. "
                     "The zero-shot columns are the individual sets behind the headline accuracy."),
                table(tables.text_tower_table(metrics, methods))),
        tradeoff_section(metrics, models),
    ]
    training = training_section(params, root)
    if training is not None:
        sections.append(training)
    if skipped:
        sections.append(skipped_generation_section(skipped))
    else:
        sections += [generation_section(gen, methods, judge), grids_section(grids, models)]
    sections.append(attack_section(att, methods, root))
    # The claims come last so that every verdict's numbers are in a section above it.
    verdicts = tables.claims(metrics, methods) + generation.claims(gen, methods) + attack.claims(att, methods)
    sections.append(section("Claims from the papers, checked on this run",
                            para("Each verdict is computed from the numbers above; not evaluated means a method "
                                 "the claim needs is not in this run, or a number it needs is missing."),
                            claims_block(verdicts)))
    return Report(TITLE, intro(params), sections, verdicts)


def write_report(report: Report, out_dir: str | os.PathLike = "reports") -> Path:
    """report.md, report.html and the PNGs, replacing `out_dir` as a whole only when all are written (a failing
    run leaves the previous report, never a half-written one for DVC to cache)."""
    images = report.images  # checks the names before anything is written
    with atomic_dir(out_dir) as tmp:
        (tmp / MARKDOWN_FILE).write_text(report.markdown(), encoding="utf-8")
        (tmp / HTML_FILE).write_text(report.html(), encoding="utf-8")
        for name, png in images.items():
            (tmp / name).write_bytes(png)
    return Path(out_dir)
