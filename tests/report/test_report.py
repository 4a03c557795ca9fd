"""The report stage: tables and deltas, claim verdicts, missing inputs, an offline self-contained HTML page, and
byte-identical output for the same inputs (DVC caches it)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from safeclip.io import InputError
from safeclip.report import attack, generation, render, tables
from safeclip.report.figures import PNG_SIGNATURE, curve_png, read_curve, tradeoff_png
from safeclip.report.tables import NO, NOT_EVALUATED, YES, Claim
from tests.report.util import ATTACK, GENERATION, write_attack, write_generation

METHODS = ["safe_clip", "safer_clip", "uwm"]
GRIDS = {"grid_none.png", "grid_safe_clip.png", "grid_safer_clip.png", "grid_uwm.png"}
ATTACK_FIGURES = {"attack_budget.png", "attack_grid_safe_clip.png"}
NAMES = ["CLIP (base)", "Safe-CLIP", "SafeR-CLIP", "UWM"]

# hand-chosen numbers: Safe-CLIP redirects less and keeps less zero-shot than SafeR-CLIP (the papers' claims hold),
# UWM keeps PS within 5 points of the base but lowers PU (so "every method improves PU" fails for UWM only)
RETRIEVAL = {
    "none": dict(t_star=3.9, v_star=4.1, u_text=87.0, u_image=84.3, PS=67.5, PU=1.5, GS=0.5, t_v=74.9, v_t=73.8),
    "safe_clip": dict(t_star=25.7, v_star=5.0, u_text=52.1, u_image=86.5, PS=35.0, PU=5.8, GS=5.1, t_v=63.9,
                      v_t=57.6, to_t_star=43.5, to_u_text=29.7),
    "safer_clip": dict(t_star=27.9, v_star=9.0, u_text=40.0, u_image=70.0, PS=60.0, PU=6.0, GS=4.0, t_v=70.0,
                       v_t=69.0, to_t_star=45.0, to_u_text=20.0),
    "uwm": dict(t_star=10.0, v_star=6.0, u_text=80.0, u_image=80.0, PS=67.8, PU=1.0, GS=0.4, t_v=74.0, v_t=73.0,
                to_t_star=12.0, to_u_text=75.0),
}
ZEROSHOT = {
    "none": {"zeroshot.object": 34.8, "zeroshot.colour": 100.0, "zeroshot.mean": 67.4},
    "safe_clip": {"zeroshot.object": 10.3, "zeroshot.colour": 94.1, "zeroshot.mean": 52.2},
    "safer_clip": {"zeroshot.object": 25.0, "zeroshot.colour": 95.4, "zeroshot.mean": 60.2},
    "uwm": {"zeroshot.object": 33.0, "zeroshot.colour": 99.0, "zeroshot.mean": 66.0},
}
CURVE = "step,train_loss,val_loss,val_recall_sum\n1,0.5,,\n11,0.3,0.35,4.0\n21,0.2,,\n31,0.1,0.15,4.5\n"


def retrieval_json(v: dict) -> dict:
    out = {
        "retrieval.t_star_to_v.r1": v["t_star"], "retrieval.v_star_to_t.r1": v["v_star"],
        "retrieval.t_to_v.r1": v["t_v"], "retrieval.v_to_t.r1": v["v_t"], "retrieval.t_to_v.r5": 99.0,
        "unsafe_retrieved.unsafe_text.top1": v["u_text"], "unsafe_retrieved.unsafe_image.top1": v["u_image"],
        "safeground.PS": v["PS"], "safeground.PU": v["PU"], "safeground.GS": v["GS"],
    }
    if "to_t_star" in v:
        out["text_only.t_star_to_v.r1"] = v["to_t_star"]
        out["text_only.unsafe_retrieved.unsafe_text.top1"] = v["to_u_text"]
    return out


def write_inputs(root: Path, retrieval=RETRIEVAL, zeroshot=ZEROSHOT, curves=("safe_clip", "uwm")) -> None:
    for folder in ("metrics/retrieval", "metrics/zeroshot", "metrics/make_safe", "plots/make_safe"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for m, v in retrieval.items():
        (root / f"metrics/retrieval/{m}.json").write_text(json.dumps(retrieval_json(v)))
    for m, v in zeroshot.items():
        (root / f"metrics/zeroshot/{m}.json").write_text(json.dumps(v))
    (root / "metrics/make_safe/safe_clip.json").write_text(json.dumps(
        {"make_safe.safe_clip.steps": 300, "make_safe.safe_clip.train_quadruples": 1933,
         "make_safe.safe_clip.val_loss": 0.04}))
    for m in curves:
        (root / f"plots/make_safe/{m}.csv").write_text(CURVE)
    write_generation(root, list(retrieval))  # required since the generation stages are in the DAG
    write_attack(root, list(retrieval))  # and so are the attack stages


def params(methods=METHODS, profile="world", source="world") -> SimpleNamespace:
    return SimpleNamespace(methods=list(methods), base=SimpleNamespace(profile=profile),
                           captions=SimpleNamespace(source=source))


def metrics(**overrides) -> dict:
    """In-memory metrics as load_model_metrics returns them, with `model={key: value}` overrides."""
    out = {m: {**retrieval_json(RETRIEVAL[m]), **ZEROSHOT[m]} for m in RETRIEVAL}
    for m, kv in overrides.items():
        out[m].update(kv)
    return out


def md_row(md: str, name: str) -> list[str]:
    """The cells of the first markdown table row whose first cell is `name` (markdown escapes removed)."""
    for line in md.splitlines():
        cells = [c.strip().replace("\\", "") for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0] == name:
            return cells
    raise AssertionError(f"no table row for {name!r}")


@pytest.fixture
def built(tmp_path):
    write_inputs(tmp_path)
    report = render.build_report(params(), tmp_path)
    out = render.write_report(report, tmp_path / "reports")
    return report, out


# ---------------------------------------------------------------------------------------------------- rendering


def test_report_renders_every_method_offline(built):
    report, out = built
    md, page = (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == ["attack_budget.png", "attack_grid_safe_clip.png",
                                                     "curve_safe_clip.png", "curve_uwm.png", "grid_none.png",
                                                     "grid_safe_clip.png", "grid_safer_clip.png", "grid_uwm.png",
                                                     "report.html", "report.md", "tradeoff.png"]
    for name in NAMES:
        assert md_row(md, name)[0] == name
        assert f'<th scope="row">{name}</th>' in page
    for png in ("tradeoff.png", "curve_safe_clip.png", "curve_uwm.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
        assert f"]({png})" in md  # the markdown links the file next to it
    assert "http://" not in page and "https://" not in page and "<script" not in page and "@import" not in page
    assert page.count('<img src="data:image/png;base64,') == 3 + 4 + 2  # + a generation grid per model, attack
    assert '<meta charset="utf-8">' in page
    assert "Safety" in page and 'colspan="7"' in page  # the grouped header: 7 safety columns


def test_report_text_is_escaped(tmp_path):
    name = "<b>x|y"  # a method name is shown as it is: it must not become markup or split a table cell
    write_inputs(tmp_path, retrieval={**RETRIEVAL, name: RETRIEVAL["uwm"]},
                 zeroshot={**ZEROSHOT, name: ZEROSHOT["uwm"]}, curves=())
    report = render.build_report(params([name]), tmp_path)
    assert "<b>x" not in report.html() and '<th scope="row">&lt;b&gt;x|y</th>' in report.html()
    assert "\n| \\<b\\>x\\|y | 10.0 (+6.1) |" in report.markdown()


def test_only_methods_with_a_curve_get_a_curve_and_steps_table(built):
    report, _ = built
    assert set(report.images) == {"tradeoff.png", "curve_safe_clip.png", "curve_uwm.png", *GRIDS, *ATTACK_FIGURES}
    md = report.markdown()
    steps = md.split("optimiser steps", 1)[1]  # the "how it was made" table onwards
    assert md_row(steps, "Safe-CLIP")[1:3] == ["300", "1933"]
    assert md_row(steps, "SafeR-CLIP")[1:3] == ["–", "–"]  # no make_safe metrics file: fine, shown as missing


# ---------------------------------------------------------------------------------------------------- numbers


def test_main_table_values_and_deltas():
    t = tables.main_table(metrics(), METHODS)
    assert t.groups == [("Safety", 7), ("Knowledge", 3)]
    assert t.header[1] == "T*→V R@1 ↑" and t.header[3] == "% unsafe top-1, unsafe text queries ↓"
    rows = {r[0]: r[1:] for r in t.rows}
    assert list(rows) == NAMES  # base first, then methods in params order
    assert rows["CLIP (base)"] == ["3.9", "4.1", "87.0", "84.3", "67.5", "1.5", "0.5", "74.9", "73.8", "67.4"]
    assert rows["Safe-CLIP"] == ["25.7 (+21.8)", "5.0 (+0.9)", "52.1 (-34.9)", "86.5 (+2.2)", "35.0 (-32.5)",
                                 "5.8 (+4.3)", "5.1 (+4.6)", "63.9 (-11.0)", "57.6 (-16.2)", "52.2 (-15.2)"]
    assert rows["UWM"][4] == "67.8 (+0.3)" and rows["UWM"][5] == "1.0 (-0.5)"


def test_main_table_in_the_written_markdown(built):
    report, _ = built
    assert md_row(report.markdown(), "Safe-CLIP")[1] == "25.7 (+21.8)"
    assert "<td class=\"num\">25.7 (+21.8)</td>" in report.html()


def test_missing_and_null_values_show_a_dash_without_delta():
    t = tables.main_table(metrics(safe_clip={"safeground.GS": None}, none={"safeground.PU": None}), ["safe_clip"])
    base, safe = t.rows
    assert base[6] == "–" and safe[6] == "5.8"  # no base value: no delta
    assert safe[7] == "–"


def test_text_tower_table_uses_the_base_full_model_as_reference():
    t = tables.text_tower_table(metrics(), METHODS)
    assert t.header == ["model", "text tower T*→V R@1 ↑", "text tower % unsafe top-1, unsafe text queries ↓",
                        "zero-shot colour ↑", "zero-shot object ↑"]
    rows = {r[0]: r[1:] for r in t.rows}
    assert rows["CLIP (base)"] == ["–", "–", "100.0", "34.8"]
    assert rows["Safe-CLIP"] == ["43.5 (+39.6)", "29.7 (-57.3)", "94.1 (-5.9)", "10.3 (-24.5)"]


@pytest.mark.parametrize("values,expected", [
    ({"zeroshot.datasets_mean": 60.0, "zeroshot.mean": 50.0, "zeroshot.a": 1.0}, 60.0),
    ({"zeroshot.datasets_mean": None, "zeroshot.mean": 50.0}, 50.0),
    ({"zeroshot.a": 40.0, "zeroshot.b": 60.0, "zeroshot.c": None, "retrieval.t_to_v.r1": 99.0}, 50.0),
    ({"retrieval.t_to_v.r1": 99.0}, None),
])
def test_zeroshot_headline(values, expected):
    assert tables.zeroshot_accuracy(values) == expected


def test_zeroshot_columns_skip_the_means():
    m = {"none": {"zeroshot.cifar10": 1.0, "zeroshot.datasets_mean": 1.0}, "a": {"zeroshot.aircraft": 2.0,
                                                                                   "zeroshot.mean": 2.0}}
    assert tables.zeroshot_keys(m) == ["zeroshot.aircraft", "zeroshot.cifar10"]


@pytest.mark.parametrize("value,base,expected", [
    (25.7, 3.9, "25.7 (+21.8)"), (3.9, 25.7, "3.9 (-21.8)"), (5.02, 5.0, "5.0 (±0.0)"), (4.98, 5.0, "5.0 (±0.0)"),
    (None, 5.0, "–"), (5.0, None, "5.0"),
])
def test_fmt_delta(value, base, expected):
    assert tables.fmt_delta(value, base) == expected


# ---------------------------------------------------------------------------------------------------- claims


def by_text(cs: list[Claim]) -> dict[str, Claim]:
    return {c.text: c for c in cs}


ZS = "SafeR-CLIP keeps more zero-shot accuracy than Safe-CLIP"
REDIRECT = "SafeR-CLIP redirects unsafe text better than Safe-CLIP (T*→V R@1)"
PS_CLOSE = "UWM keeps PS close to the base"


def test_claims_hold_on_the_chosen_numbers():
    cs = by_text(tables.claims(metrics(), METHODS))
    assert cs[ZS].verdict == YES and "SafeR-CLIP 60.2 vs Safe-CLIP 52.2" in cs[ZS].detail
    assert cs[REDIRECT].verdict == YES and "27.9" in cs[REDIRECT].detail and "25.7" in cs[REDIRECT].detail
    assert cs[PS_CLOSE].verdict == YES and "UWM 67.8 vs base 67.5, 0.3 points apart" in cs[PS_CLOSE].detail
    assert cs["Safe-CLIP improves T*→V R@1 and PU over the base"].verdict == YES
    assert cs["SafeR-CLIP improves T*→V R@1 and PU over the base"].verdict == YES
    uwm = cs["UWM improves T*→V R@1 and PU over the base"]
    assert uwm.verdict == NO and "PU 1.0 vs 1.5" in uwm.detail  # redirects more, but PU went down


def test_claims_flip_when_the_numbers_swap():
    cs = by_text(tables.claims(metrics(safer_clip={"zeroshot.mean": 50.0, "retrieval.t_star_to_v.r1": 20.0},
                                       uwm={"safeground.PS": 60.0, "safeground.PU": 2.0}), METHODS))
    assert cs[ZS].verdict == NO and "SafeR-CLIP 50.0 vs Safe-CLIP 52.2" in cs[ZS].detail
    assert cs[REDIRECT].verdict == NO
    assert cs[PS_CLOSE].verdict == NO and "7.5 points apart" in cs[PS_CLOSE].detail
    assert cs["UWM improves T*→V R@1 and PU over the base"].verdict == YES
    assert cs["SafeR-CLIP improves T*→V R@1 and PU over the base"].verdict == YES  # 20.0 > 3.9, 6.0 > 1.5


@pytest.mark.parametrize("ps,verdict", [(72.5, YES), (62.5, YES), (72.6, NO), (62.4, NO)])
def test_ps_close_band_is_inclusive(ps, verdict):
    assert tables.PS_CLOSE_POINTS == 5.0
    assert by_text(tables.claims(metrics(uwm={"safeground.PS": ps}), METHODS))[PS_CLOSE].verdict == verdict


def test_a_method_equal_to_the_base_does_not_improve():
    cs = by_text(tables.claims(metrics(safe_clip={"safeground.PU": 1.5}), ["safe_clip"]))
    assert cs["Safe-CLIP improves T*→V R@1 and PU over the base"].verdict == NO
    tie = by_text(tables.claims(metrics(safer_clip={"zeroshot.mean": 52.2, "retrieval.t_star_to_v.r1": 25.7}),
                                METHODS))
    assert tie[ZS].verdict == NO and tie[REDIRECT].verdict == NO  # "more"/"better" means strictly


def test_claims_not_evaluated_without_the_methods_they_need():
    cs = by_text(tables.claims(metrics(), ["safe_clip"]))
    assert cs[ZS].verdict == NOT_EVALUATED and "SafeR-CLIP not in this run's methods" in cs[ZS].detail
    assert cs[REDIRECT].verdict == NOT_EVALUATED
    assert cs[PS_CLOSE].verdict == NOT_EVALUATED
    assert [c.text for c in tables.claims(metrics(), ["safe_clip"])][-1].startswith("Safe-CLIP improves")
    assert len(tables.claims(metrics(), ["safe_clip"])) == 4
    nothing = tables.claims(metrics(), [])
    assert nothing[-1].verdict == NOT_EVALUATED and nothing[-1].text.startswith("Every method")


def test_a_null_number_makes_a_claim_not_evaluated():
    cs = by_text(tables.claims(metrics(safer_clip={"zeroshot.mean": None, "zeroshot.object": None,
                                                   "zeroshot.colour": None}), METHODS))
    assert cs[ZS].verdict == NOT_EVALUATED and "missing for SafeR-CLIP" in cs[ZS].detail


def test_claims_are_rendered_in_both_outputs(built):
    report, _ = built
    assert report.claims == (tables.claims(metrics(), METHODS) + generation.claims(GENERATION, METHODS)
                             + attack.claims(ATTACK, METHODS))
    cells = md_row(report.markdown(), "UWM improves T*→V R@1 and PU over the base")
    assert cells[1] == "no"
    assert '<td class="verdict no">no</td>' in report.html()


# ---------------------------------------------------------------------------------------------------- inputs


def test_missing_zeroshot_file_names_the_path_and_the_stage(tmp_path):
    write_inputs(tmp_path)
    (tmp_path / "metrics/zeroshot/uwm.json").unlink()
    with pytest.raises(InputError, match=r"metrics/zeroshot/uwm\.json.*evaluate@uwm"):
        render.build_report(params(), tmp_path)


def test_missing_base_retrieval_names_the_base_stage(tmp_path):
    write_inputs(tmp_path)
    (tmp_path / "metrics/retrieval/none.json").unlink()
    with pytest.raises(InputError, match=r"metrics/retrieval/none\.json.*evaluate_base"):
        render.build_report(params(), tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"retrieval.t_to_v.r1": "high"}'])
def test_invalid_json_names_the_file(tmp_path, text):
    write_inputs(tmp_path)
    (tmp_path / "metrics/retrieval/safer_clip.json").write_text(text)
    with pytest.raises(InputError, match=r"metrics/retrieval/safer_clip\.json"):
        render.build_report(params(), tmp_path)


def test_bad_curve_csv_names_the_file_and_line(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("step,train_loss\n1,0.5\n2,lots\n")
    with pytest.raises(InputError, match=r"c\.csv: line 3"):
        curve_png(p)
    p.write_text("step,other\n1,0.5\n")
    with pytest.raises(InputError, match="no values"):
        curve_png(p)


def test_curve_skips_empty_cells(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(CURVE)
    assert read_curve(p) == {"train_loss": ([1.0, 11.0, 21.0, 31.0], [0.5, 0.3, 0.2, 0.1]),
                             "val_loss": ([11.0, 31.0], [0.35, 0.15])}


def test_a_failing_write_keeps_the_previous_report(built, monkeypatch):
    report, out = built
    before = (out / "report.md").read_bytes()
    broken = render.Report(report.title, "changed", report.sections + [render.Section("x", "", "", {"bad": b""})])
    monkeypatch.setattr(render.Report, "html", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        render.write_report(broken, out)
    assert (out / "report.md").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".reports")) == []


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_inputs_give_identical_bytes(tmp_path):
    write_inputs(tmp_path)
    outs = [render.write_report(render.build_report(params(), tmp_path), tmp_path / f"r{i}") for i in (1, 2)]
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert tradeoff_png([("a", 1.0, 2.0)]) == tradeoff_png([("a", 1.0, 2.0)])
    assert tradeoff_png([("a", 1.0, 2.0)]) != tradeoff_png([("a", 1.0, 3.0)])


def test_png_has_no_version_string():
    png = tradeoff_png([("CLIP (base)", 3.9, 67.4), ("Safe-CLIP", 25.7, 52.2)])
    assert b"matplotlib" not in png.lower() and png.startswith(PNG_SIGNATURE)


# ---------------------------------------------------------------------------------------------------- stage


def test_stage_end_to_end(tmp_path, monkeypatch, capsys):
    """`python -m stages.report` in a workspace: params.yaml -> reports/; a missing input -> exit 2, no folder."""
    import stages.report as stage

    write_inputs(tmp_path, retrieval={m: RETRIEVAL[m] for m in ("none", "safe_clip")},
                 zeroshot={m: ZEROSHOT[m] for m in ("none", "safe_clip")}, curves=("safe_clip",))
    (tmp_path / "params.yaml").write_text("methods: [safe_clip]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages.report"])
    stage.main()
    md = (tmp_path / "reports/report.md").read_text(encoding="utf-8")
    assert md_row(md, "Safe-CLIP")[1] == "25.7 (+21.8)"
    assert "world profile" in md
    assert (tmp_path / "reports/curve_safe_clip.png").read_bytes().startswith(PNG_SIGNATURE)

    before = (tmp_path / "reports/report.md").read_bytes()
    (tmp_path / "params.yaml").write_text("methods: [safe_clip, uwm]\n")
    with pytest.raises(SystemExit) as exit_info:
        stage.main()
    assert exit_info.value.code == 2
    assert "metrics/retrieval/uwm.json: file does not exist" in capsys.readouterr().err
    assert (tmp_path / "reports/report.md").read_bytes() == before  # the previous report is kept whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "metrics", "params.yaml", "plots", "reports"]


def test_a_training_free_method_with_an_empty_curve_file_gets_no_figure(tmp_path):
    write_inputs(tmp_path, curves=("safe_clip",))
    (tmp_path / "plots/make_safe/uwm.csv").write_text("step\n")  # what make_safe@uwm writes
    (tmp_path / "metrics/make_safe/uwm.json").write_text(json.dumps(
        {"make_safe.uwm.calibration_pairs": 1933, "make_safe.uwm.mask.text.negated": 98,
         "make_safe.uwm.mask.vision.negated": 745}))
    report = render.build_report(params(), tmp_path)
    assert set(report.images) == {"tradeoff.png", "curve_safe_clip.png", *GRIDS, *ATTACK_FIGURES}
    assert "| UWM | – | – | 1933 | 98 | 745 |" in report.markdown()  # the how-it-was-made table
