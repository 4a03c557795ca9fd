"""report: one page comparing every method with the base CLIP -> reports/report.{md,html} (+ the PNGs).

Reads only metrics and plots files and the generation grids' PNG bytes (no model, no torch, no image decoding),
so it reruns in seconds whenever a number changes.
"""

from safeclip.report.render import build_report, write_report
from safeclip.stage import entry_point, run_stage, start


@entry_point
def main() -> None:
    params, log = start("report")
    report = build_report(params)
    out = write_report(report, "reports")
    log.info("%s/report.md, report.html and %d figures: %s", out, len(report.images),
             ", ".join(f"{c.text}: {c.verdict}" for c in report.claims))


if __name__ == "__main__":
    run_stage(main)
