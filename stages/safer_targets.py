"""safer_targets: SafeR-CLIP's redirection targets, computed once before training -> data/safer_clip/.

For every train and val quadruple, the safe caption of the same split nearest to its unsafe caption in the
frozen base CLIP text tower (top-1 cosine); make_safe@safer_clip redirects to it and to its image.
"""

import numpy as np

from safeclip.clip.model import encode_texts, load_clip
from safeclip.data.schemas import SAFER_TARGETS
from safeclip.io import InputError, read_parquet, write_metrics, write_parquet
from safeclip.methods.quadruples import quadruple_rows
from safeclip.methods.safer_clip import redirection_targets
from safeclip.runtime import compute_device
from safeclip.stage import entry_point, run_stage, start


@entry_point
def main() -> None:
    params, log = start("safer_targets")
    bundle = load_clip("models/base_clip")
    bundle.model.eval().to(compute_device(params.base.device))
    metrics: dict[str, float] = {}
    for split in ("train", "val"):
        rows = quadruple_rows(f"data/visu/{split}.parquet")
        if not rows:
            raise InputError(
                f"data/visu/{split}.parquet: no row has an unsafe image (field 'nsfw_image'), so there is no "
                "quadruple to redirect. The visu stage makes them: set visu.images.pipeline to a text-to-image "
                "model (paper face), and check metrics/visu.json (visu.<split>.no_image) for how many it left out")
        targets = redirection_targets([r["id"] for r in rows], [r["safe"] for r in rows], [r["nsfw"] for r in rows],
                                      lambda texts: encode_texts(bundle, texts, params.evaluate.batch_size))
        write_parquet(f"data/safer_clip/{split}.parquet", targets, SAFER_TARGETS)
        sim = np.array([t["target_similarity"] for t in targets])
        partner = np.array([t["partner_similarity"] for t in targets])
        metrics |= {f"safer_targets.{split}.quadruples": len(targets),
                    f"safer_targets.{split}.target_is_partner": 100 * float(np.mean([t["target_is_partner"]
                                                                                        for t in targets])),
                    f"safer_targets.{split}.target_similarity": float(sim.mean()),
                    f"safer_targets.{split}.partner_similarity": float(partner.mean())}
    read_parquet("data/safer_clip/train.parquet", SAFER_TARGETS)  # the contract holds for what we wrote
    write_metrics("metrics/safer_targets.json", metrics)
    log.info("targets: %s", {k: round(v, 3) for k, v in metrics.items()})


if __name__ == "__main__":
    run_stage(main)
