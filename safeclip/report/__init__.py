"""The `report` stage: one offline page comparing every make-safe method with the base CLIP.

tables (metrics in, comparison rows and claim verdicts out), figures (deterministic matplotlib PNGs) and render
(markdown + self-contained HTML, written as one folder atomically) are kept apart so each can be tested alone.
"""
