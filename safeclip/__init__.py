"""safeclip: make CLIP-like models safe (Safe-CLIP, SafeR-CLIP, UWM), as a DVC pipeline.

Kernel pins, opt-in: with `SAFECLIP_KERNEL_PINS=1`, importing the package pins the CPU kernels' instruction set to
AVX2 before torch loads (on x86-64; a value exported for one of the variables wins over its pin). Float results
depend on the kernels torch picks: unpinned, the same seed gave another tiny LLM on an AVX-512 machine than on an
AVX2 one; pinned, `models/base_llm` had the same md5 on two machines. They are off by default because they are
not free: on the AVX-512 AMD EPYC that made `dvc.lock` they cost 9-31% of a training step
(`benchmarks/pin_cost.py`), most of it in the convolutions of base_sd and the judge, and a run on another CPU
or thread count is another draw of the world either way (README). (`ATEN_CPU_CAPABILITY=default` is not
"torch's choice": it selects ATen's unvectorised kernels.)
"""

import os as _os
import platform as _platform

KERNEL_PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

if _platform.machine().lower() in {"x86_64", "amd64"} and _os.environ.get("SAFECLIP_KERNEL_PINS", "0") == "1":
    for _key, _value in KERNEL_PINS.items():
        _os.environ.setdefault(_key, _value)
