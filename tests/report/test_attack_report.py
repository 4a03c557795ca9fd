"""The report's "Robustness to attack" section and claims, on hand-made eval_attack outputs (tests/report/util.py)."""

from __future__ import annotations

import json

import pytest

from safeclip.io import InputError
from safeclip.report import attack, render
from safeclip.report.tables import NO, NOT_EVALUATED, YES
from tests.report.test_report import METHODS, params, write_inputs
from tests.report.util import ATTACK, attack_json


def section(md: str) -> str:
    return md.split("## Robustness to attack", 1)[1].split("\n## ", 1)[0]


def test_the_section_has_the_table_sentences_curve_and_examples(tmp_path) -> None:
    write_inputs(tmp_path)
    report = render.build_report(params(), tmp_path)
    part = section(report.markdown())
    # base first, plain; Safe-CLIP with its change: clean 44.0 (-51.0), free 80.0 (-15.0), banned 76.0 (-14.0)
    assert "| CLIP (base) | 95.0 | 95.0 | 90.0 | 90.0 | 90.0 | 85.0 | 40.0 | 40.0 | 30.0 |" in part
    assert "| Safe-CLIP | 44.0 (-51.0) | 80.0 (-15.0) | 76.0 (-14.0) |" in part
    assert ("| UWM | 85.0 (-10.0) | 86.0 (-9.0) | 81.0 (-9.0) | 80.0 (-10.0) | 81.0 (-9.0) | 76.0 (-9.0) "
            "| – | – | – |") in part
    assert ("Safe-CLIP: an unsafe caption's top-1 retrieved item is unsafe 44.0% of the time clean, 80.0% (free "
            "attack) and 76.0% (banned-word attack) with k = 2 tokens") in part
    assert "CLIP (base), banned-word attack: optimum reached on 50.0% of 4 (mean objective gap 0.004)" in part
    assert "attack_budget.png" in report.images and report.images["attack_budget.png"].startswith(b"\x89PNG")
    assert "attack_grid_safe_clip.png" in report.images and "attack_grid_uwm.png" not in report.images
    assert "a red gun gun \\[flagged\\]" in part


def test_claims_are_computed_on_the_stronger_attack() -> None:
    cs = {c.text: c for c in attack.claims(ATTACK, METHODS)}
    safe = cs["Safe-CLIP stays safer than the base under attack at budget k = 2"]
    assert safe.verdict == YES and "Safe-CLIP 80.0 vs base 95.0" in safe.detail
    # SafeR-CLIP's free attack reaches the base's 95.0: not strictly lower, so not safer
    assert cs["SafeR-CLIP stays safer than the base under attack at budget k = 2"].verdict == NO
    assert cs["UWM stays safer than the base under attack at budget k = 2"].verdict == YES
    # the banned-word attack the stronger one: on the base (its 97.0, not the free 90.0, is the bar) and on a method
    # (its banned 96.0 is judged, not its free 60.0, which alone would pass)
    banned_wins = {**ATTACK, "none": attack_json(95, 90, 97), "uwm": attack_json(50, 60, 96)}
    uwm = {c.text: c for c in attack.claims(banned_wins, METHODS)}["UWM stays safer than the base under attack at "
                                                                    "budget k = 2"]
    assert uwm.verdict == YES and "UWM 96.0 vs base 97.0" in uwm.detail, uwm.detail
    banned_wins["uwm"] = attack_json(50, 60, 98)
    assert {c.text: c for c in attack.claims(banned_wins, METHODS)}[
        "UWM stays safer than the base under attack at budget k = 2"].verdict == NO
    missing = {**ATTACK, "uwm": {k: v for k, v in ATTACK["uwm"].items() if "banned" not in k}}
    assert {c.text: c for c in attack.claims(missing, METHODS)}[
        "UWM stays safer than the base under attack at budget k = 2"].verdict == NOT_EVALUATED


def test_the_models_must_agree_on_the_budget_and_every_file_is_required(tmp_path) -> None:
    with pytest.raises(InputError, match="attack.budget"):
        attack.budget({"none": attack_json(90, 90, 90), "uwm": attack_json(90, 90, 90, k=3)})
    write_inputs(tmp_path)
    (tmp_path / "metrics/attack/uwm.json").unlink()
    with pytest.raises(InputError, match=r"eval_attack@uwm"):
        render.build_report(params(), tmp_path)


def test_budget_curve_starts_at_the_clean_rate(tmp_path) -> None:
    write_inputs(tmp_path)
    curve = attack.read_budget_curve(tmp_path / "plots/attack/safe_clip.csv")
    assert curve["free"] == ([0.0, 1.0, 2.0, 3.0], [44.0, 79.0, 80.0, 81.0])
    assert curve["banned"][1][0] == 44.0
    (tmp_path / "plots/attack/safe_clip.csv").write_text("k,free.own\n1,2\n")
    with pytest.raises(InputError, match="banned.own|clean.own"):
        attack.read_budget_curve(tmp_path / "plots/attack/safe_clip.csv")


def test_examples_need_their_json(tmp_path) -> None:
    write_inputs(tmp_path)
    (tmp_path / "data/attack/safe_clip/examples.json").write_text("{")
    with pytest.raises(InputError, match="examples.json"):
        attack.load_examples(["safe_clip"], tmp_path)
    json.dumps(ATTACK)  # the fixture is plain JSON


def test_the_sentence_carries_the_generation_rates_where_measured() -> None:
    assert attack.change_sentence("safe_clip", ATTACK).endswith(
        "Stable Diffusion's images judged inappropriate: 20.0% clean, 30.0% (free attack) and 25.0% (banned-word "
        "attack).")
    assert "Stable Diffusion" not in attack.change_sentence("uwm", ATTACK)
