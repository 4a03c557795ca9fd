"""safeclip: make CLIP-like models safe (Safe-CLIP, SafeR-CLIP, UWM), as a DVC pipeline.

Importing the package pins the CPU kernels' instruction set to AVX2 before torch loads (on x86-64, unless the
environment already sets them). Float results depend on the kernels torch picks: unpinned, the same seed gave
another tiny LLM on an AVX-512 machine than on another CPU, and every number downstream differed. Pinned,
`models/base_llm` had the same md5 on two different machines, for ~15% more time in that stage. Export
`ATEN_CPU_CAPABILITY=default` (or another value) before running to choose otherwise.
"""

import os as _os
import platform as _platform

KERNEL_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

if _platform.machine().lower() in {"x86_64", "amd64"}:
    for _key, _value in KERNEL_PINS.items():
        _os.environ.setdefault(_key, _value)
