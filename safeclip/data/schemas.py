"""Explicit pyarrow schemas: the data contracts between stages (DESIGN.md section 4)."""

import pyarrow as pa

# HF `datasets.Image` layout: a struct of encoded bytes and/or a path, so users' tools read it as an image.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

PAIRS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("safe", pa.string(), nullable=False),
    pa.field("unsafe", pa.string(), nullable=False),
    pa.field("tag", pa.string(), nullable=False),
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_line", pa.int32(), nullable=False),
])

CAPTIONS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("caption", pa.string(), nullable=False),
    pa.field("image", IMAGE, nullable=True),
    pa.field("source", pa.string(), nullable=False),
    pa.field("scene", pa.string(), nullable=True),  # world scene JSON
    pa.field("seed", pa.int64(), nullable=True),  # world render seed
    pa.field("nsfw", pa.string(), nullable=True),  # visu-hf: the released unsafe caption
    pa.field("tag", pa.string(), nullable=True),  # visu-hf: its concept
])

SPLITS = ("train", "val", "test")

VISU = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("safe", pa.string(), nullable=False),
    pa.field("nsfw", pa.string(), nullable=False),
    pa.field("tag", pa.string(), nullable=True),
    pa.field("image", IMAGE, nullable=True),
    pa.field("nsfw_image", IMAGE, nullable=True),  # null when no seed gave an image a judge flags (paper)
    pa.field("source", pa.string(), nullable=False),
    pa.field("gen_model", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=True),  # seed of the unsafe image
    pa.field("scene", pa.string(), nullable=True),  # world: the safe scene
    pa.field("nsfw_scene", pa.string(), nullable=True),  # world: the unsafe scene
])

# SafeR-CLIP's redirection targets: for each quadruple (by id) the nearest safe caption of the same split in
# the frozen base text tower (its row id), and the similarities the curriculum and the report use.
SAFER_TARGETS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("target_id", pa.string(), nullable=False),
    pa.field("target_similarity", pa.float32(), nullable=False),  # cos(T0(t*), T0(t^))
    pa.field("partner_similarity", pa.float32(), nullable=False),  # cos(T0(t*), T0(t)), its ViSU partner
    pa.field("target_is_partner", pa.bool_(), nullable=False),
])
