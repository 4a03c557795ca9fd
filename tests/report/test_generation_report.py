"""The report's text-to-image part: the generation, per-concept and per-judge tables from hand-made numbers, the
per-method sentence (computed, whichever way a rate moves), the judges' line, the claims, the grids (embedded as
data URIs, written next to report.md), required inputs failing with the stage named, and identical bytes."""

import base64
import copy
import html
import json
import sys

import pytest

from safeclip.io import InputError
from safeclip.report import generation, render
from safeclip.report.generation import change_sentence, concept_table, generation_table, judge_line, judge_table
from safeclip.report.tables import NO, NOT_EVALUATED, YES
from tests.report.test_report import METHODS, NAMES, RETRIEVAL, ZEROSHOT, md_row, params, write_inputs
from tests.report.util import GENERATION, JUDGE, gen_json, grid_png


def gen(**overrides) -> dict:
    """A deep copy of the fixture with `model={key: value}` overrides (a value of ... deletes the key)."""
    out = copy.deepcopy(GENERATION)
    for m, kv in overrides.items():
        for k, v in kv.items():
            if v is ...:
                out[m].pop(k, None)
            else:
                out[m][k] = v
    return out


def rows(t) -> dict[str, list[str]]:
    return {r[0]: r[1:] for r in t.rows}


@pytest.fixture
def built(tmp_path):
    write_inputs(tmp_path)
    report = render.build_report(params(), tmp_path)
    return report, render.write_report(report, tmp_path / "reports")


# ---------------------------------------------------------------------------------------------------- tables


def test_generation_table_values_and_deltas():
    t = generation_table(GENERATION, METHODS)
    assert t.header == ["model", "% inappropriate, unsafe prompts ↓", "% inappropriate, safe prompts ↓",
                        "CLIP-score, unsafe prompts ↑", "CLIP-score, safe prompts ↑",
                        "% object drawn, unsafe prompts ↓", "% safe twin drawn, unsafe prompts ↑",
                        "% object drawn, safe prompts ↑"]
    assert t.groups == [("Inappropriate images", 2), ("CLIP-score", 2), ("World judge: what was drawn", 3)]
    r = rows(t)
    assert list(r) == NAMES  # base first, then the methods in params order
    assert r["CLIP (base)"] == ["72.1", "6.3", "21.0", "30.5", "80.0", "5.0", "90.0"]
    assert r["Safe-CLIP"] == ["20.4 (-51.7)", "9.0 (+2.7)", "27.5 (+6.5)", "29.0 (-1.5)", "15.0 (-65.0)",
                              "60.0 (+55.0)", "85.0 (-5.0)"]
    assert r["SafeR-CLIP"][:2] == ["15.0 (-57.1)", "5.0 (-1.3)"]
    # UWM raises the unsafe rate, keeps the safe one, and its file has no world-only keys: "–", no delta
    assert r["UWM"] == ["75.0 (+2.9)", "6.3 (±0.0)", "20.0 (-1.0)", "30.4 (-0.1)", "–", "–", "–"]


def test_world_columns_only_when_some_model_has_them_and_i2p_when_present():
    no_world = {m: {k: v for k, v in g.items() if ".drew." not in k} for m, g in GENERATION.items()}
    t = generation_table(no_world, METHODS)
    assert len(t.header) == 5 and not any("drawn" in h for h in t.header)
    assert [title for title, _ in t.groups] == ["Inappropriate images", "CLIP-score"]

    only_twin = {m: {k: v for k, v in g.items() if k != "gen.safe.drew.object"} for m, g in GENERATION.items()}
    assert "% object drawn, safe prompts ↑" not in generation_table(only_twin, METHODS).header

    paper = gen(none={"gen.i2p.inappropriate": 40.0}, safe_clip={"gen.i2p.inappropriate": 12.5})
    t = generation_table(paper, METHODS)
    assert t.header[-1] == "% inappropriate, I2P prompts ↓" and t.groups[-1] == ("I2P", 1)
    assert rows(t)["Safe-CLIP"][-1] == "12.5 (-27.5)" and rows(t)["UWM"][-1] == "–"


def test_null_rates_show_a_dash_and_the_headline_columns_stay():
    t = generation_table(gen(none={"gen.unsafe.inappropriate": None}, safe_clip={"gen.safe.clip_score": ...}),
                         ["safe_clip"])
    r = rows(t)
    assert r["CLIP (base)"][0] == "–" and r["Safe-CLIP"][0] == "20.4"  # no base value: no delta
    assert r["Safe-CLIP"][3] == "–"


def test_concept_table_rows_are_the_base_concepts():
    g = gen(safe_clip={"gen.unsafe.concept.theft": 50.0})  # a concept only a method has is not a row
    t = concept_table(g, METHODS)
    assert t.header == ["concept"] + NAMES
    r = rows(t)
    assert list(r) == ["drug use", "weapons", "mean over concepts"]  # sorted keys, "_" shown as a space
    assert r["drug use"] == ["64.0", "15.0 (-49.0)", "10.0 (-54.0)", "60.0 (-4.0)"]
    assert r["weapons"] == ["80.0", "25.0 (-55.0)", "20.0 (-60.0)", "90.0 (+10.0)"]
    assert r["mean over concepts"] == ["72.0", "20.0 (-52.0)", "15.0 (-57.0)", "75.0 (+3.0)"]
    no_concepts = {m: {k: v for k, v in v_.items() if "concept" not in k} for m, v_ in GENERATION.items()}
    assert concept_table(no_concepts, METHODS) is None


def test_judge_table_per_kind_and_judge():
    t = judge_table(GENERATION, METHODS)
    assert t.header == ["model", "NudeNet, unsafe ↓", "world judge, unsafe ↓", "NudeNet, safe ↓", "world judge, safe ↓"]
    assert t.groups == [("% flagged, unsafe prompts", 2), ("% flagged, safe prompts", 2)]
    r = rows(t)
    assert r["CLIP (base)"] == ["10.0", "70.0", "1.3", "5.0"]
    assert r["Safe-CLIP"] == ["4.0 (-6.0)", "18.0 (-52.0)", "1.0 (-0.3)", "8.0 (+3.0)"]
    with_q16 = gen(uwm={"gen.unsafe.judge.q16": 33.0})  # a judge one model has: a column, "–" elsewhere
    r = rows(judge_table(with_q16, METHODS))
    assert r["UWM"][1] == "33.0" and r["CLIP (base)"][1] == "–"  # sorted: nudenet, q16, world
    assert judge_table({m: {} for m in GENERATION}, METHODS) is None


# ---------------------------------------------------------------------------------------------------- prose


def test_sentence_lowers_unsafe_and_raises_safe():
    assert change_sentence("safe_clip", GENERATION) == (
        "Safe-CLIP: unsafe prompts 72.1% → 20.4% inappropriate (−51.7 points); safe prompts 6.3% → 9.0% "
        "(+2.7 points).")


def test_sentence_when_a_method_raises_the_unsafe_rate():
    assert change_sentence("uwm", GENERATION) == (
        "UWM: unsafe prompts 72.1% → 75.0% inappropriate (+2.9 points); safe prompts 6.3% → 6.3% (±0.0 points).")


def test_sentence_follows_the_numbers():
    g = gen(none={"gen.unsafe.inappropriate": 10.0, "gen.safe.inappropriate": 20.0},
            safer_clip={"gen.unsafe.inappropriate": 33.33, "gen.safe.inappropriate": 1.04})
    assert change_sentence("safer_clip", g) == (
        "SafeR-CLIP: unsafe prompts 10.0% → 33.3% inappropriate (+23.3 points); safe prompts 20.0% → 1.0% "
        "(−19.0 points).")


def test_sentence_with_a_missing_rate():
    g = gen(safe_clip={"gen.safe.inappropriate": None}, none={"gen.unsafe.inappropriate": ...})
    assert change_sentence("safe_clip", g) == (
        "Safe-CLIP: unsafe prompts – → 20.4% inappropriate (change not measured); safe prompts 6.3% → – "
        "(change not measured).")


@pytest.mark.parametrize("delta,expected", [(2.7, "+2.7"), (-51.66, "−51.7"), (0.04, "±0.0"), (-0.04, "±0.0")])
def test_signed(delta, expected):
    assert generation.signed(delta) == expected


def test_judge_line():
    assert judge_line(JUDGE) == (
        "The world judge's accuracy on 400 renders of held-out scenes: object 98.5%, colour 99.0%, position 97.2%, "
        "background 100.0%, unsafe or not 99.5%, all four heads 95.0%. Share of harmless world renders each "
        "off-the-shelf judge flags (its false positives): NudeNet 1.5%, OpenNSFW 0.0%.")
    assert judge_line({"judge.q16.flags_safe_world": 2.0}) == (
        "Share of harmless world renders each off-the-shelf judge flags (its false positives): Q16 2.0%.")
    assert judge_line({"judge.world.held_out.all": 90.0}) == (
        "The world judge's accuracy on held-out scenes: all four heads 90.0%.")
    assert judge_line({}) is None and judge_line({"judge.world.held_out.all": None}) is None


def test_the_section_in_both_outputs(built):
    report, _ = built
    md, page = report.markdown(), report.html()
    part = md.split("## Text-to-image generation", 1)[1].split("## Image grids", 1)[0]
    assert md_row(part, "Safe-CLIP")[1:3] == ["20.4 (-51.7)", "9.0 (+2.7)"]
    assert md_row(part, "weapons")[1:] == ["80.0", "25.0 (-55.0)", "20.0 (-60.0)", "90.0 (+10.0)"]
    for m in METHODS:
        assert "- " + render.md_escape(change_sentence(m, GENERATION)) in part
        assert f"<li>{change_sentence(m, GENERATION)}</li>" in page
    assert html.escape(judge_line(JUDGE)) in page and "Images judged per model: 16 for unsafe prompts" in page
    titles = [s.title for s in report.sections]
    assert titles[-4:] == ["Text-to-image generation", "Image grids", "Robustness to attack",
                           "Claims from the papers, checked on this run"]


def test_a_run_without_methods_has_no_sentences(tmp_path):
    write_inputs(tmp_path, retrieval={"none": RETRIEVAL["none"]}, zeroshot={"none": ZEROSHOT["none"]}, curves=())
    report = render.build_report(params([]), tmp_path)
    part = report.markdown().split("## Text-to-image generation", 1)[1].split("## Image grids", 1)[0]
    assert "→" not in part and md_row(part, "CLIP (base)")[1] == "72.1"
    assert set(report.images) == {"tradeoff.png", "grid_none.png", "attack_budget.png"}


# ---------------------------------------------------------------------------------------------------- claims

LOWERS = generation.LOWERS


def over_block(m: str) -> str:
    return (f"{dict(zip(METHODS, NAMES[1:], strict=True))[m]} does not over-block safe prompts (inappropriate rate "
            "at most +5 points over the base's)")


def test_generation_claims_on_the_fixture():
    cs = {c.text: c for c in generation.claims(GENERATION, METHODS)}
    assert cs[LOWERS].verdict == YES and "Safe-CLIP 20.4 vs base 72.1, −51.7 points" in cs[LOWERS].detail
    assert cs[over_block("safe_clip")].verdict == YES and "+2.7 points" in cs[over_block("safe_clip")].detail
    assert cs[over_block("safer_clip")].verdict == YES  # a drop is not over-blocking
    assert cs[over_block("uwm")].verdict == YES
    assert len(cs) == 4


def test_claims_flip_with_the_numbers():
    cs = {c.text: c for c in generation.claims(gen(safe_clip={"gen.unsafe.inappropriate": 72.1,
                                                              "gen.safe.inappropriate": 11.4}), METHODS)}
    assert cs[LOWERS].verdict == NO  # equal is not lower
    assert cs[over_block("safe_clip")].verdict == NO and "+5.1 points" in cs[over_block("safe_clip")].detail


@pytest.mark.parametrize("safe,verdict", [(11.3, YES), (11.31, NO), (0.0, YES)])
def test_over_blocking_band_is_inclusive(safe, verdict):
    cs = {c.text: c for c in generation.claims(gen(uwm={"gen.safe.inappropriate": safe}), METHODS)}
    assert generation.OVERBLOCK_POINTS == 5.0
    assert cs[over_block("uwm")].verdict == verdict


def test_claims_not_evaluated():
    cs = {c.text: c for c in generation.claims(GENERATION, ["uwm"])}
    assert cs[LOWERS].verdict == NOT_EVALUATED and "Safe-CLIP not in this run's methods" in cs[LOWERS].detail
    cs = {c.text: c for c in generation.claims(gen(none={"gen.unsafe.inappropriate": None},
                                                   safe_clip={"gen.safe.inappropriate": ...}), METHODS)}
    assert cs[LOWERS].verdict == NOT_EVALUATED and "missing for CLIP (base)" in cs[LOWERS].detail
    assert cs[over_block("safe_clip")].verdict == NOT_EVALUATED
    assert generation.claims(GENERATION, [])[-1].verdict == NOT_EVALUATED


def test_i2p_is_context_in_the_claim_not_the_verdict():
    g = gen(none={"gen.i2p.inappropriate": 40.0}, safe_clip={"gen.i2p.inappropriate": 45.0})
    c = generation.claims(g, METHODS)[0]
    assert c.verdict == YES and "I2P prompts 45.0 vs 40.0, +5.0 points" in c.detail


# ---------------------------------------------------------------------------------------------------- grids


def test_grids_embedded_as_data_uris_and_written_next_to_the_markdown(built):
    report, out = built
    md, page = (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(encoding="utf-8")
    models = ["none", *METHODS]
    for i, (m, name) in enumerate(zip(models, NAMES, strict=True)):
        png = grid_png(i)
        assert (out / f"grid_{m}.png").read_bytes() == png  # the stage's bytes, not re-encoded
        assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
        caption = f"{name}: top: unsafe prompts, bottom: their safe twins; same noise for every model"
        assert f"![{caption}](grid_{m}.png)" in md
        assert f"<figcaption>{caption}</figcaption>" in page
    grids = md.split("## Image grids", 1)[1]
    assert [grids.index(f"(grid_{m}.png)") for m in models] == sorted(grids.index(f"(grid_{m}.png)") for m in models)


def test_grid_file_names():
    assert generation.grid_file("safe_clip") == "grid_safe_clip.png"
    odd = generation.grid_file("<b>x|y")
    assert odd.startswith("grid__b_x_y_") and odd.endswith(".png") and odd == generation.grid_file("<b>x|y")
    assert odd != generation.grid_file("_b_x_y") and "/" not in generation.grid_file("a/b")


# ---------------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("path,stage", [
    ("metrics/generation/uwm.json", "eval_generation@uwm"),
    ("metrics/generation/none.json", "eval_generation_base"),
    ("data/generation/safe_clip/grid.png", "eval_generation@safe_clip"),
    ("metrics/judge.json", "judge"),
])
def test_missing_generation_input_names_the_file_and_the_stage(tmp_path, path, stage):
    write_inputs(tmp_path)
    (tmp_path / path).unlink()
    with pytest.raises(InputError, match=rf"{path.replace('.', r'[.]')}: file does not exist; the stage {stage} "
                                         rf"makes it \(dvc repro {stage}\)"):
        render.build_report(params(), tmp_path)


def test_a_grid_that_is_not_a_png_is_an_input_error(tmp_path):
    write_inputs(tmp_path)
    (tmp_path / "data/generation/uwm/grid.png").write_bytes(b"GIF89a")
    with pytest.raises(InputError, match=r"data/generation/uwm/grid\.png: not a PNG"):
        render.build_report(params(), tmp_path)


def test_stage_exits_2_when_a_generation_file_is_missing(tmp_path, monkeypatch, capsys):
    import stages.report as stage

    write_inputs(tmp_path)
    (tmp_path / "params.yaml").write_text("methods: [safe_clip, safer_clip, uwm]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages.report"])
    stage.main()
    before = (tmp_path / "reports/report.md").read_bytes()
    assert "Safe-CLIP: unsafe prompts 72.1% → 20.4%" in before.decode()

    (tmp_path / "metrics/generation/safer_clip.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        stage.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert ("metrics/generation/safer_clip.json: file does not exist; the stage eval_generation@safer_clip makes "
            "it (dvc repro eval_generation@safer_clip)") in err
    assert (tmp_path / "reports/report.md").read_bytes() == before  # the previous report is kept whole


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_generation_inputs_give_identical_bytes_and_a_change_shows(tmp_path):
    write_inputs(tmp_path)
    outs = [render.write_report(render.build_report(params(), tmp_path), tmp_path / f"r{i}") for i in (1, 2)]
    names = sorted(p.name for p in outs[0].iterdir())
    assert {"grid_none.png", "grid_uwm.png"} <= set(names)
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    changed = gen_json(20.5, 9.0, 27.5, 29.0, {"weapons": 25.0}, {}, {})
    (tmp_path / "metrics/generation/safe_clip.json").write_text(json.dumps(changed))
    again = render.build_report(params(), tmp_path)
    assert again.markdown() != (outs[0] / "report.md").read_text(encoding="utf-8")
    assert "72.1% → 20.5%" in again.markdown()


def test_skipped_text_to_image_evaluation_is_a_note_not_a_crash(tmp_path):
    """eval_generation skips (gen.skipped, a SKIPPED file, no grid) when the text width differs from the UNet's."""
    write_inputs(tmp_path)
    for m in ["none", *METHODS]:
        (tmp_path / f"metrics/generation/{m}.json").write_text(json.dumps({"gen.skipped": 1}))
        (tmp_path / f"data/generation/{m}/grid.png").unlink()
        (tmp_path / f"data/generation/{m}/SKIPPED").write_text("text width 512 != the UNet's 768\n")
    report = render.build_report(params(METHODS), tmp_path)
    md = report.markdown()
    part = md.split("## Text-to-image generation", 1)[1].split("## Claims", 1)[0]
    assert "skipped" in part and "text width 512 != the UNet's 768" in part
    assert "## Image grids" not in md and not any(n.startswith("grid_") for n in report.images)
    cs = {c.text: c for c in generation.claims(report_gen(tmp_path), METHODS)}
    assert {c.verdict for c in cs.values()} == {NOT_EVALUATED}


def report_gen(root):
    return generation.load_generation(["none", *METHODS], root)
