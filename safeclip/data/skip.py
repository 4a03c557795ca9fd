"""The ViSU-Text skip path: when captions already carry unsafe rewrites, the LLM stages have nothing to do."""

from __future__ import annotations

import logging

from safeclip.io import atomic_dir, write_metrics
from safeclip.params import Params


def llm_stages_skipped(params: Params, stage: str, out_dir: str, metrics_path: str, log: logging.Logger) -> bool:
    """True (after writing a marker output) when captions come from ViSU-Text."""
    if params.captions.source != "visu-hf":
        return False
    with atomic_dir(out_dir) as out:
        (out / "SKIPPED").write_text("captions.source is visu-hf: ViSU-Text already holds the unsafe captions\n")
    write_metrics(metrics_path, {f"{stage}.skipped": 1})
    log.info("captions come from ViSU-Text (captions.source: visu-hf): %s is not needed, skipping", stage)
    return True
