"""The method registry is the one list of make-safe methods: the runners, params' `methods`, the Hydra source
and dvc.yaml's matrix name the same ones, and the registry imports no torch (params and the report read it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from safeclip.methods import registry

ROOT = Path(__file__).resolve().parents[2]


def test_runners_params_conf_and_the_dvc_matrix_name_the_registrys_methods() -> None:
    from safeclip.methods.runners import RUNNERS
    from safeclip.params import Params

    assert tuple(RUNNERS) == registry.NAMES
    assert Params().methods == list(registry.NAMES)
    assert yaml.safe_load((ROOT / "conf/config.yaml").read_text())["methods"] == list(registry.NAMES)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    matrices = {name: s["matrix"] for name, s in stages.items() if "matrix" in s}
    assert set(matrices) == {"make_safe", "evaluate", "eval_generation", "eval_attack"}
    assert all(m == {"method": "${methods}"} for m in matrices.values()), matrices  # the matrix is params' list


def test_display_names_and_the_base() -> None:
    assert registry.display_name(registry.BASE) == "CLIP (base)"
    assert [registry.display_name(m) for m in registry.NAMES] == ["Safe-CLIP", "SafeR-CLIP", "UWM"]
    assert registry.display_name("safe_clip+uwm") == "safe_clip+uwm"  # an unknown name is shown as it is
    assert all(registry.BY_NAME[m].card.startswith(f"**{registry.display_name(m)}**") for m in registry.NAMES)


def test_a_method_outside_the_registry_is_a_params_error() -> None:
    import pytest
    from pydantic import ValidationError

    from safeclip.params import Params

    with pytest.raises(ValidationError, match="safe_clip"):
        Params(methods=["safe_clip", "nope"])


def test_the_registry_imports_no_torch() -> None:
    code = "import sys, safeclip.methods.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
