"""DVC stage entry points (`python -m stages.<name>`). Importing safeclip first sets the kernel pins, when
SAFECLIP_KERNEL_PINS=1 asks for them, before any stage module imports torch (see safeclip/__init__.py).

The collector's oldest generation is collected 10x less often (a full collection every 100 middle ones, not 10).
A stage's imports (torch, transformers, diffusers) build about a million long-lived objects; at CPython's default
thresholds that growth set off 6-9 full collections, each walking the whole heap: 0.6-0.8 s of a ~3.3 s start,
paid by every stage process (27 in the world DAG, as many in each end-to-end test run). Young garbage is
collected as before, and no stage's numbers depend on when the collector runs.
"""

import gc

_young, _middle, _ = gc.get_threshold()
gc.set_threshold(_young, _middle, 100)

import safeclip  # noqa: E402, F401
