"""The synthetic world: a compositional scene renderer with a caption grammar and an oracle.

It stands in for COCO + an NSFW generator + NSFW judges, with exact ground truth, so the whole pipeline can
be trained and measured offline on a CPU. Import the modules themselves (catalogue, grammar, oracle, render,
scene): this file imports none of them, so a stage that only reads captions does not depend on the renderer.
"""
