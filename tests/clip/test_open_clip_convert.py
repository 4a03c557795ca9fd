"""open_clip -> HF CLIPModel conversion: exact embeddings, tokenizer ids, preprocessing, export and safe loading.

Everything runs on a tiny open_clip CLIP built from a config dict (no download). Every parameter, LayerNorms and
biases included, gets noise on top of open_clip's init so a mis-mapped or transposed tensor changes the outputs.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from safeclip.clip.open_clip_convert import (
    EOT_ID,
    hf_to_open_clip_state_dict,
    load_open_clip,
    open_clip_to_hf,
    parse_open_clip_source,
)
from safeclip.io import InputError

ARCH = "safeclip-test-tiny-openclip"
CTX = 16
CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CTX, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
TEXTS = [
    "a photo of a cat",
    "Hello, World!! What's UP?",
    "  extra   spaces\tand\nnew lines  ",
    "UPPER CASE and MiXeD case",
    "punctuation: (yes) -- no; 'single' \"double\" ... ?!",
    "naïve café déjà vu 12345 3.14 #tag @user",
    "",
    "a caption that is far too long to fit in sixteen tokens, so both tokenizers have to truncate it the same way",
]
ATOL = 1e-5


def _tiny(seed: int = 0, quick_gelu: bool = False, vision: dict | None = None, text: dict | None = None,
          **kwargs) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=CFG["embed_dim"],
        vision_cfg={**CFG["vision_cfg"], **(vision or {})},
        text_cfg={**CFG["text_cfg"], **(text or {})},
        quick_gelu=quick_gelu,
        **kwargs,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _convert(model: open_clip.CLIP, quick_gelu: bool = False):
    return open_clip_to_hf(model, quick_gelu=quick_gelu, image_mean=MEAN, image_std=STD, image_size=32)


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Path:
    """Register the tiny config under ARCH so open_clip.create_model/get_tokenizer know it, as for a real arch."""
    d = tmp_path_factory.mktemp("oc_configs")
    (d / f"{ARCH}.json").write_text(json.dumps(CFG))
    open_clip.add_model_config(d)
    return d


@pytest.fixture(scope="module")
def oc_tokenizer(registered):
    return open_clip.get_tokenizer(ARCH)


@pytest.fixture(scope="module")
def pair():
    model = _tiny()
    return model, *_convert(model)


def _hf_text(hf_model: CLIPModel, tokenizer, texts, **kw) -> torch.Tensor:
    batch = tokenizer(texts, truncation=True, return_tensors="pt", **kw)
    with torch.no_grad():
        return hf_model.get_text_features(**batch).pooler_output


# --- (a) text ------------------------------------------------------------------------------------------------


def test_tokenizer_ids_match_open_clip(pair, oc_tokenizer):
    _, _, tokenizer, _ = pair
    expected = oc_tokenizer(TEXTS)
    got = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=CTX, return_tensors="pt")
    ids, mask = got["input_ids"], got["attention_mask"].bool()
    assert ids.shape == expected.shape == (len(TEXTS), CTX)
    assert torch.equal(ids[mask], expected[mask])
    # the attended part ends at the (first) EOT; open_clip pads with 0, the HF tokenizer with EOT (see module doc)
    first_eot = (expected == EOT_ID).int().argmax(dim=1)
    assert torch.equal(mask, torch.arange(CTX)[None] <= first_eot[:, None])
    assert (expected[~mask] == 0).all() and (ids[~mask] == EOT_ID).all()
    assert expected[-1, -1] == EOT_ID and ids[-1, -1] == EOT_ID  # truncation keeps an EOT at the end
    assert tokenizer.model_max_length == CTX


def test_text_embeddings_match(pair, oc_tokenizer):
    model, hf_model, tokenizer, _ = pair
    with torch.no_grad():
        expected = model.encode_text(oc_tokenizer(TEXTS))
        # HF-padded ids (EOT pads) give the same features in open_clip too: argmax picks the first EOT
        hf_ids = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=CTX, return_tensors="pt")
        assert torch.allclose(model.encode_text(hf_ids["input_ids"]), expected, atol=ATOL)
    assert expected.abs().max() > 0.1
    for padding in (True, "max_length"):  # dynamic padding (shorter than the context) and full-context padding
        got = _hf_text(hf_model, tokenizer, TEXTS, padding=padding)
        assert (got - expected).abs().max() < ATOL
    # logit_scale is carried over too
    assert torch.allclose(hf_model.logit_scale, model.logit_scale)


# --- (b) image -----------------------------------------------------------------------------------------------


def test_image_embeddings_match(pair):
    model, hf_model, _, _ = pair
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model.encode_image(pixels)
        got = hf_model.get_image_features(pixel_values=pixels).pooler_output
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() < ATOL


def _rgb(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_image_processor_matches_open_clip_preprocess(pair):
    model, hf_model, _, processor = pair
    preprocess = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD)
    assert isinstance(processor, CLIPImageProcessor)
    assert processor.size == {"shortest_edge": 32} and processor.crop_size == {"height": 32, "width": 32}

    # Already at the target size: resizing is the identity, so only rescale + normalise are compared.
    img = _rgb(32, 32, 0)
    expected = preprocess(img)
    got = processor(images=img, return_tensors="pt")["pixel_values"][0]
    assert (got - expected).abs().max() < 1e-4
    with torch.no_grad():
        assert torch.allclose(hf_model.get_image_features(pixel_values=got[None]).pooler_output,
                              model.encode_image(expected[None]), atol=ATOL)

    # A different size and aspect (resize shortest edge + centre crop). CLIPImageProcessor's default torchvision
    # backend resizes uint8 tensors and rounds some pixels one grey level away from PIL's bicubic, which
    # open_clip uses; the PIL backend with the same settings reproduces open_clip exactly.
    for w, h in ((57, 41), (41, 70)):
        img = _rgb(w, h, w)
        expected = preprocess(img)
        got = processor(images=img, return_tensors="pt")["pixel_values"][0]
        assert got.shape == expected.shape == (3, 32, 32)
        one_level = 1 / 255 / min(STD) + 1e-5
        assert (got - expected).abs().max() <= one_level
        pil = CLIPImageProcessorPil(**processor.to_dict())(images=img, return_tensors="pt")["pixel_values"][0]
        assert (pil - expected).abs().max() < 1e-5


def test_image_processor_squash_mode(pair):
    model = pair[0]
    squash = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD, resize_mode="squash")
    _, _, processor = open_clip_to_hf(model, quick_gelu=False, image_mean=MEAN, image_std=STD, image_size=32,
                                      resize_mode="squash")
    img = _rgb(57, 41, 3)
    expected = squash(img)
    got = processor(images=img, return_tensors="pt")["pixel_values"][0]
    assert got.shape == expected.shape == (3, 32, 32)
    assert (got - expected).abs().max() <= 1 / 255 / min(STD) + 1e-5
    pil = CLIPImageProcessorPil(**processor.to_dict())(images=img, return_tensors="pt")["pixel_values"][0]
    assert (pil - expected).abs().max() < 1e-5
    with pytest.raises(ValueError, match="resize_mode"):
        open_clip_to_hf(model, quick_gelu=False, image_mean=MEAN, image_std=STD, image_size=32, resize_mode="longest")


# --- (c) quick_gelu ------------------------------------------------------------------------------------------


def test_quick_gelu_variant(oc_tokenizer):
    model = _tiny(seed=3, quick_gelu=True)
    with pytest.raises(ValueError, match="quick_gelu"):
        _convert(model, quick_gelu=False)
    hf_model, tokenizer, _ = _convert(model, quick_gelu=True)
    assert hf_model.config.text_config.hidden_act == hf_model.config.vision_config.hidden_act == "quick_gelu"
    assert _convert(model, quick_gelu=None)[0].config.vision_config.hidden_act == "quick_gelu"  # read from blocks
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (hf_model.get_image_features(pixel_values=pixels).pooler_output
                - model.encode_image(pixels)).abs().max() < ATOL
        expected = model.encode_text(oc_tokenizer(TEXTS))
    assert (_hf_text(hf_model, tokenizer, TEXTS, padding=True) - expected).abs().max() < ATOL
    with pytest.raises(ValueError, match="quick_gelu"):
        _convert(_tiny(), quick_gelu=True)


# --- (d) export ----------------------------------------------------------------------------------------------


def test_round_trip_to_open_clip(pair, oc_tokenizer):
    model, hf_model, _, _ = pair
    state = hf_to_open_clip_state_dict(hf_model)
    original = model.state_dict()
    assert set(state) == set(original)
    for key, value in original.items():
        assert torch.equal(state[key], value), key

    # After "fine-tuning" the HF model, the exported checkpoint reproduces the HF model's embeddings in open_clip.
    tuned = CLIPModel(hf_model.config)
    tuned.load_state_dict(hf_model.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fresh = _tiny(seed=99)
    fresh.load_state_dict(hf_to_open_clip_state_dict(tuned), strict=True)
    pixels = torch.randn(2, 3, 32, 32)
    ids = oc_tokenizer(TEXTS)
    with torch.no_grad():
        assert (fresh.encode_image(pixels)
                - tuned.get_image_features(pixel_values=pixels).pooler_output).abs().max() < ATOL
        assert (fresh.encode_text(ids) - tuned.get_text_features(input_ids=ids).pooler_output).abs().max() < ATOL

    # adapters that were not merged are refused rather than silently dropped
    tuned.text_model.register_parameter("lora_A", torch.nn.Parameter(torch.zeros(2)))
    with pytest.raises(ValueError, match="merge adapters"):
        hf_to_open_clip_state_dict(tuned)


# --- (e) save / reload ---------------------------------------------------------------------------------------


def test_save_pretrained_and_reload(pair, oc_tokenizer, tmp_path):
    model, hf_model, tokenizer, processor = pair
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))

    ids = oc_tokenizer(TEXTS)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text_expected = model.encode_text(ids)
        image_expected = model.encode_image(pixels)
        reloaded = CLIPModel.from_pretrained(tmp_path).eval()
        text_only = CLIPTextModel.from_pretrained(tmp_path).eval()
        text_proj = CLIPTextModelWithProjection.from_pretrained(tmp_path).eval()
        tok2 = CLIPTokenizer.from_pretrained(tmp_path)
        auto_tok = AutoTokenizer.from_pretrained(tmp_path)
        proc2 = CLIPImageProcessor.from_pretrained(tmp_path)

        for tok in (tok2, auto_tok):
            a = tok(TEXTS, padding="max_length", truncation=True, return_tensors="pt")
            b = tokenizer(TEXTS, padding="max_length", truncation=True, return_tensors="pt")
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"],
                                                                                 b["attention_mask"])
        batch = tok2(TEXTS, padding=True, truncation=True, return_tensors="pt")
        assert (reloaded.get_text_features(**batch).pooler_output - text_expected).abs().max() < ATOL
        assert (reloaded.get_image_features(pixel_values=pixels).pooler_output
                - image_expected).abs().max() < ATOL
        assert (text_proj(**batch).text_embeds - text_expected).abs().max() < ATOL
        pooled = hf_model.text_model(**batch).pooler_output
        assert (text_only(**batch).pooler_output - pooled).abs().max() < ATOL
        assert text_only.config.eos_token_id == EOT_ID

    img = _rgb(45, 38, 7)
    assert torch.equal(proc2(images=img, return_tensors="pt")["pixel_values"],
                       processor(images=img, return_tensors="pt")["pixel_values"])


# --- (f) loading ---------------------------------------------------------------------------------------------


def test_parse_open_clip_source():
    assert parse_open_clip_source("open_clip:ViT-B-32") == ("ViT-B-32", None)
    assert parse_open_clip_source("open_clip:ViT-B-32/") == ("ViT-B-32", None)
    assert parse_open_clip_source("open_clip:ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_open_clip_source("open_clip:ViT-B-32//abs/w.safetensors") == ("ViT-B-32", "/abs/w.safetensors")
    assert parse_open_clip_source("open_clip:ViT-B-32/rel/w.safetensors") == ("ViT-B-32", "rel/w.safetensors")
    assert parse_open_clip_source("openai/clip-vit-base-patch32") is None
    assert parse_open_clip_source("world") is None
    for bad in ("open_clip:", "open_clip:/tag", "open_clip:hf-hub:laion/CLIP-ViT-B-32"):
        with pytest.raises(InputError):
            parse_open_clip_source(bad)


def _same_embeddings(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor) -> bool:
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.encode_text(ids), b.encode_text(ids)) and torch.equal(a.encode_image(pixels),
                                                                                     b.encode_image(pixels))


def test_load_open_clip_from_local_safetensors(registered, oc_tokenizer, tmp_path):
    source_model = _tiny(seed=5)
    path = tmp_path / "weights dir" / "tiny.safetensors"
    path.parent.mkdir()
    save_file(source_model.state_dict(), str(path))

    arch, pretrained = parse_open_clip_source(f"open_clip:{ARCH}/{path}")
    assert (arch, pretrained) == (ARCH, str(path))
    model, tokenizer, preprocess_cfg = load_open_clip(arch, pretrained)
    ids = oc_tokenizer(TEXTS)
    assert not model.training
    assert _same_embeddings(model, source_model, ids)
    assert torch.equal(tokenizer(TEXTS), ids)
    assert tuple(preprocess_cfg["size"]) == (32, 32) and tuple(preprocess_cfg["mean"]) == tuple(MEAN)

    hf_model, hf_tok, _ = open_clip_to_hf(model, quick_gelu=False, image_mean=preprocess_cfg["mean"],
                                          image_std=preprocess_cfg["std"], image_size=preprocess_cfg["size"],
                                          interpolation=preprocess_cfg["interpolation"])
    with torch.no_grad():
        assert (_hf_text(hf_model, hf_tok, TEXTS, padding=True) - model.encode_text(ids)).abs().max() < ATOL

    random_model, _, _ = load_open_clip(ARCH, None)  # architecture only
    assert not torch.equal(random_model.visual.proj, source_model.visual.proj)

    # a DDP-style "module." prefix is accepted; weights of another architecture are an input error
    save_file({f"module.{k}": v for k, v in source_model.state_dict().items()}, str(tmp_path / "ddp.safetensors"))
    assert _same_embeddings(load_open_clip(ARCH, str(tmp_path / "ddp.safetensors"))[0], source_model, ids)
    save_file({"visual.proj": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="does not hold"):
        load_open_clip(ARCH, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="does not exist"):
        load_open_clip(ARCH, str(tmp_path / "missing.safetensors"))


class _Payload:
    """Unpickling this creates ``marker``: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_load_open_clip_refuses_pickles(registered, tmp_path):
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Payload(armed)))
    assert armed.exists()  # the payload really would fire if anything unpickled it

    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Payload(marker))
    for name in ("weights.pt", "weights.bin", "weights.pth", "open_clip_pytorch_model.bin"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(InputError, match="safetensors"):
            load_open_clip(ARCH, str(tmp_path / name))
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(payload)
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_open_clip(ARCH, str(disguised))
    assert not marker.exists()


def test_load_open_clip_pretrained_tags(registered, tmp_path, monkeypatch):
    pcfgs = open_clip.pretrained._PRETRAINED
    monkeypatch.setitem(pcfgs, ARCH, {
        "uncached": {"hf_hub": "safeclip-test/definitely-not-cached-xyz/", "url": ""},
        "pickle_only": {"hf_hub": "", "url": "https://example.invalid/weights.pt"},
        "named_bin": {"hf_hub": "safeclip-test/named/open_clip_pytorch_model.bin", "url": ""},
        "qg": {"hf_hub": "safeclip-test/qg/", "url": "", "quick_gelu": True, "mean": (0.5, 0.5, 0.5),
               "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "resize_mode": "squash"},
    })
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    start = time.monotonic()
    with pytest.raises(InputError) as err:
        load_open_clip(ARCH, "uncached")
    assert time.monotonic() - start < 5
    message = str(err.value)
    for hint in ("hf download safeclip-test/definitely-not-cached-xyz open_clip_model.safetensors", "HF cache",
                 "internet", "//path/to/weights.safetensors"):
        assert hint in message
    with pytest.raises(InputError, match="no safetensors"):
        load_open_clip(ARCH, "pickle_only")
    with pytest.raises(InputError, match="known tags"):
        load_open_clip(ARCH, "no_such_tag")

    # Tags resolve to the hub repo's safetensors file, cache-only under HF_HUB_OFFLINE=1, and carry their settings.
    path = tmp_path / "tiny.safetensors"
    save_file(_tiny(seed=6).state_dict(), str(path))
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("local_files_only")))
        return str(path)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    load_open_clip(ARCH, "named_bin")
    model, _, preprocess_cfg = load_open_clip(ARCH, "qg")
    assert calls == [("safeclip-test/named", "open_clip_model.safetensors", True),
                     ("safeclip-test/qg", "open_clip_model.safetensors", True)]
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert tuple(preprocess_cfg["mean"]) == (0.5, 0.5, 0.5) and preprocess_cfg["interpolation"] == "bilinear"
    assert preprocess_cfg["resize_mode"] == "squash"
    hf_model, _, processor = open_clip_to_hf(model, quick_gelu=None, image_mean=preprocess_cfg["mean"],
                                             image_std=preprocess_cfg["std"], image_size=preprocess_cfg["size"],
                                             interpolation=preprocess_cfg["interpolation"],
                                             resize_mode=preprocess_cfg["resize_mode"])
    assert hf_model.config.vision_config.hidden_act == "quick_gelu"
    assert processor.size == {"height": 32, "width": 32} and not processor.do_center_crop
    assert list(processor.image_mean) == [0.5, 0.5, 0.5] and int(processor.resample) == 2  # PIL bilinear


# --- (g) unsupported variants --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vision": {"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 4}}, "attentional"),
        ({"vision": {"pool_type": "avg"}}, "pool_type"),
        ({"vision": {"no_ln_pre": True}}, "no_ln_pre"),
        ({"vision": {"final_ln_after_pool": True}}, "final_ln_after_pool"),
        ({"vision": {"ls_init_value": 1e-5}}, "LayerScale"),
        ({"vision": {"qk_norm": True}}, "CustomResidualAttentionBlock"),
        ({"vision": {"image_size": [32, 48]}}, "non-square"),
        ({"vision": {"layers": [1, 1, 1, 1], "width": 8, "head_width": 8, "image_size": 64}}, "ModifiedResNet"),
        ({"text": {"pool_type": "last"}}, "text pool_type"),
        ({"text": {"pool_type": "eos", "eos_id": 2}}, "eos pooling"),
        ({"text": {"proj_bias": True}}, "proj_bias"),
        ({"text": {"no_causal_mask": True}}, "no_causal_mask"),
        ({"text": {"vocab_size": 1000}}, "vocab size"),
        ({"text": {"act_kwargs": {"approximate": "tanh"}}}, "activation"),
        ({"init_logit_bias": -10.0}, "logit_bias"),
    ],
)
def test_unsupported_variants_raise(kwargs, match):
    model = _tiny(**kwargs)
    with pytest.raises(ValueError, match=match):
        _convert(model)


def test_unsupported_model_classes_and_arguments():
    torch.manual_seed(0)
    custom = open_clip.CustomTextCLIP(embed_dim=32, vision_cfg=CFG["vision_cfg"], text_cfg=CFG["text_cfg"])
    with pytest.raises(ValueError, match="CustomTextCLIP"):
        _convert(custom)
    model = _tiny()
    with pytest.raises(ValueError, match="image_size"):
        open_clip_to_hf(model, quick_gelu=False, image_mean=MEAN, image_std=STD, image_size=224)
    with pytest.raises(ValueError, match="interpolation"):
        open_clip_to_hf(model, quick_gelu=False, image_mean=MEAN, image_std=STD, image_size=32,
                        interpolation="lanczos")


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("RN50", "ModifiedResNet"),
        ("convnext_base", "timm"),
        ("xlm-roberta-base-ViT-B-32", "HF text"),
        ("coca_ViT-B-32", "CoCa"),
        ("ViT-B-16-SigLIP", "timm|CustomTextCLIP|tokenizer"),
        ("ViT-L-14-CLIPA", "tokenizer"),
    ],
)
def test_unsupported_architectures_refused_before_building(arch, match):
    with pytest.raises(ValueError, match=match):
        load_open_clip(arch, None)
    with pytest.raises(InputError, match="unknown open_clip architecture"):
        load_open_clip("no-such-arch", None)


def test_base_clip_from_an_open_clip_source_is_a_plain_clip_folder(registered, oc_tokenizer, tmp_path):
    """The base_clip stage's paper-face path: open_clip weights in, an HF CLIPModel folder out, same embeddings,
    and LoRA (the make_safe path) attaches to the converted model's k/v/out_proj, fc1/fc2, patch embedding."""
    from safeclip.clip.model import encode_texts, load_clip, resolve_base_clip
    from safeclip.methods.lora import add_lora
    from safeclip.params import BaseClip, ClipLora

    source_model = _tiny(seed=7)
    path = tmp_path / "tiny.safetensors"
    save_file(source_model.state_dict(), str(path))
    out = tmp_path / "base_clip"
    out.mkdir()
    summary = resolve_base_clip(BaseClip(source=f"open_clip:{ARCH}/{path}"), out)
    assert "converted" in summary and json.loads((out / "open_clip.json").read_text())["arch"] == ARCH
    bundle = load_clip(out)
    with torch.no_grad():
        expected = source_model.encode_text(oc_tokenizer(TEXTS))
    assert (encode_texts(bundle, TEXTS) - expected).abs().max() < ATOL
    lora = add_lora(bundle.model, ClipLora())
    assert any("patch_embedding" in n and "lora_A" in n for n, _ in lora.named_parameters())


def test_base_clip_from_a_local_hf_folder_is_a_pointer(tmp_path):
    from safeclip.clip.model import build_world_clip, load_clip, resolve_base_clip
    from safeclip.params import BaseClip, WorldClip

    tiny = build_world_clip(WorldClip(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                      projection_dim=16, patch_size=8), 32)
    tiny.save(tmp_path / "hub_copy")
    out = tmp_path / "base_clip"
    out.mkdir()
    resolve_base_clip(BaseClip(source=str(tmp_path / "hub_copy")), out)
    assert [p.name for p in out.iterdir()] == ["resolved.json"]  # no multi-GB copy
    bundle = load_clip(out)
    assert bundle.model.config.projection_dim == 16
