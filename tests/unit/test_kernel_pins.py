"""Kernel pins are opt-in: importing safeclip leaves the CPU kernels to torch; SAFECLIP_KERNEL_PINS=1 pins them
to AVX2 before torch loads (x86-64), and a variable the user exported wins over its pin."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"},
                                reason="the pins apply to x86-64 only")
PINS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def pinned(with_torch: bool = False, **env: str) -> list[str]:
    """The three variables after `import safeclip` in a fresh interpreter (and torch's kernel capability, which
    costs a torch import: only one test pays it)."""
    clean = {k: v for k, v in os.environ.items() if k not in (*PINS, "SAFECLIP_KERNEL_PINS")}
    show = "torch.backends.cpu.get_cpu_capability()" if with_torch else "''"
    code = (f"import os, safeclip{', torch' if with_torch else ''}; "
            f"print(*[os.environ.get(k, '-') for k in {PINS!r}], {show})")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_importing_safeclip_leaves_the_kernels_to_torch() -> None:
    assert pinned() == ["-", "-", "-"]


def test_opting_in_pins_avx2_and_torch_runs_it() -> None:
    assert pinned(with_torch=True, SAFECLIP_KERNEL_PINS="1") == ["avx2", "AVX2", "AVX2", "AVX2"]


def test_an_exported_value_wins_over_its_pin() -> None:
    assert pinned(SAFECLIP_KERNEL_PINS="1", ATEN_CPU_CAPABILITY="avx512") == ["avx512", "AVX2", "AVX2"]
