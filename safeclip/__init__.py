"""safeclip: make CLIP-like models safe (Safe-CLIP, SafeR-CLIP, UWM), as a DVC pipeline.

Importing the package pins the CPU kernels' instruction set to AVX2 before torch loads (on x86-64, unless the
environment already sets them). Float results depend on the kernels torch picks: unpinned, the same seed gave
another tiny LLM on an AVX-512 machine than on another CPU, and every number downstream differed. Pinned,
`models/base_llm` had the same md5 on two different machines, and at 1 and 2 threads. On the AVX-512 AMD EPYC
that made `dvc.lock` the pins cost no time (README). `SAFECLIP_KERNEL_PINS=0` leaves the kernels to torch; a
value exported for one of the variables wins over its pin. (`ATEN_CPU_CAPABILITY=default` is not "torch's
choice": it selects ATen's unvectorised kernels.)
"""

import os as _os
import platform as _platform

KERNEL_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

if _platform.machine().lower() in {"x86_64", "amd64"} and _os.environ.get("SAFECLIP_KERNEL_PINS", "1") != "0":
    for _key, _value in KERNEL_PINS.items():
        _os.environ.setdefault(_key, _value)
