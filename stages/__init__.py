"""DVC stage entry points (`python -m stages.<name>`). Importing safeclip first pins the CPU kernels before
any stage module imports torch (see safeclip/__init__.py)."""

import safeclip  # noqa: F401
