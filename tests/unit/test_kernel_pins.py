"""Importing safeclip pins the CPU kernels to AVX2 before torch loads (x86-64); SAFECLIP_KERNEL_PINS=0 opts out,
and a variable the user exported wins over its pin."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"},
                                reason="the pins apply to x86-64 only")
PINS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def capability(**env: str) -> list[str]:
    """The three variables and torch's kernel capability, in a fresh interpreter that imports safeclip first."""
    clean = {k: v for k, v in os.environ.items() if k not in (*PINS, "SAFECLIP_KERNEL_PINS")}
    code = (f"import os, safeclip, torch; print(*[os.environ.get(k, '-') for k in {PINS!r}], "
            "torch.backends.cpu.get_cpu_capability())")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_importing_safeclip_pins_avx2() -> None:
    assert capability() == ["avx2", "AVX2", "AVX2", "AVX2"]


def test_opting_out_leaves_the_kernels_to_torch() -> None:
    *pins, _ = capability(SAFECLIP_KERNEL_PINS="0")
    assert pins == ["-", "-", "-"]


def test_an_exported_value_wins_over_its_pin() -> None:
    assert capability(ATEN_CPU_CAPABILITY="default")[0::3] == ["default", "DEFAULT"]
