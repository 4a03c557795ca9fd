"""make_safe@<method>: make the base CLIP safe with one method -> models/safe/<method> (a merged CLIPModel).

    python -m safeclip.launch stages.make_safe --method safe_clip     (safer_clip, uwm)
"""

from safeclip.io import write_metrics, write_plot_csv
from safeclip.methods import registry
from safeclip.methods.runners import RUNNERS
from safeclip.stage import entry_point, option, run_stage, start

METHODS = list(registry.NAMES)


@entry_point
def main() -> None:
    method = option("method", METHODS)
    params, log = start(f"make_safe@{method}")
    made = RUNNERS[method](params, log)
    if not made.is_main:
        return
    made.bundle.save(f"models/safe/{method}")
    write_metrics(f"metrics/make_safe/{method}.json", made.metrics)
    write_plot_csv(f"plots/make_safe/{method}.csv", made.curve)
    log.info("%s: saved models/safe/%s", method, method)


if __name__ == "__main__":
    run_stage(main)
