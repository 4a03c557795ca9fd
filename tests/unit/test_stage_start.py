"""A stage process's start: setup() silences the HF libraries without importing them (`import datasets` cost
0.5 s of every stage start), yet their bars and warnings stay off whether a library loads before or after it;
`import stages` makes full collections rarer during the heavy imports that follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUIET = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")


def fresh(code: str, **env: str) -> dict:
    """Run `code` in a new interpreter (the HF variables cleared, `env` added); it prints one JSON object."""
    clean = {k: v for k, v in os.environ.items() if k not in QUIET}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**clean, "PYTHONPATH": str(ROOT), **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_setup_imports_no_hf_library_and_they_load_quiet_afterwards() -> None:
    got = fresh("""
        import json, logging, sys
        from safeclip.runtime import setup
        setup("t", 0, 1)
        before = sorted(m for m in ("datasets", "transformers") if m in sys.modules)
        import datasets, huggingface_hub.utils, transformers
        from transformers.utils import logging as hf_logging
        print(json.dumps({"imported_by_setup": before,
                          "datasets_bars": datasets.is_progress_bar_enabled(),
                          "hub_bars": not huggingface_hub.utils.are_progress_bars_disabled(),
                          "transformers_bars": hf_logging.is_progress_bar_enabled(),
                          "transformers_level": hf_logging.get_verbosity() == logging.ERROR}))
    """)
    assert got == {"imported_by_setup": [], "datasets_bars": False, "hub_bars": False, "transformers_bars": False,
                   "transformers_level": True}


def test_libraries_loaded_before_setup_are_silenced_too() -> None:
    got = fresh("""
        import json, logging
        import datasets, huggingface_hub.utils
        from transformers.utils import logging as hf_logging
        assert datasets.is_progress_bar_enabled() and hf_logging.is_progress_bar_enabled()
        from safeclip.runtime import setup
        setup("t", 0, 1)
        print(json.dumps({"datasets_bars": datasets.is_progress_bar_enabled(),
                          "hub_bars": not huggingface_hub.utils.are_progress_bars_disabled(),
                          "transformers_bars": hf_logging.is_progress_bar_enabled(),
                          "transformers_level": hf_logging.get_verbosity() == logging.ERROR}))
    """)
    assert got == {"datasets_bars": False, "hub_bars": False, "transformers_bars": False, "transformers_level": True}


def test_a_value_the_user_exported_wins() -> None:
    got = fresh("""
        import json
        from safeclip.runtime import setup
        setup("t", 0, 1)
        import datasets
        print(json.dumps({"datasets_bars": datasets.is_progress_bar_enabled()}))
    """, HF_DATASETS_DISABLE_PROGRESS_BARS="0")
    assert got == {"datasets_bars": True}


def test_importing_stages_collects_the_oldest_generation_less_often() -> None:
    got = fresh("""
        import gc, json
        default = gc.get_threshold()
        import stages
        print(json.dumps({"default": default, "stages": gc.get_threshold()}))
    """)
    assert got["stages"][:2] == got["default"][:2]  # young and middle generations as CPython sets them
    assert got["stages"][2] == 10 * got["default"][2]
