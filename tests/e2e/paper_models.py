"""Tiny stand-ins of the paper's models, of the real classes and file layouts, built in seconds: a Llama-2-shaped
causal LM with a SentencePiece-style BPE tokenizer and a Llama-2 chat template, a 224-px CLIPModel with CLIP's
byte-level BPE tokenizer, a StableDiffusionPipeline whose UNet cross-attends at the CLIP text width, and
BERT-class DPO scorers (a SFW/NSFW sequence classifier and a sentence encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

LLAMA2_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")


def corpus(pairs_file: Path) -> list[str]:
    from safeclip.llm.template import PROMPT

    rows = [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()]
    return [PROMPT.format(safe="")] + [r["safe"] for r in rows] + [r["unsafe"] for r in rows]


def llama(out: Path, texts: list[str], width: int = 32) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                                      show_progress=False))
    tok = LlamaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def clip_bpe_tokenizer(out: Path):
    """CLIP's tokenizer files with the byte-level alphabet and no merges: every character one token."""
    from transformers import CLIPTokenizer

    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = [chr(b) for b in keep] + [chr(256 + i) for i in range(256 - len(keep))]  # GPT-2's byte alphabet
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77)


def clip(out: Path, text_width: int = 32) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = clip_bpe_tokenizer(out)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=text_width, intermediate_size=2 * text_width,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=224, patch_size=32),
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)


def stable_diffusion(out: Path, clip_dir: Path, size: int = 32) -> None:
    """UNet cross-attention width = the CLIP's text width, as SD v1.4 with ViT-L/14 (768)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from safeclip.params import WorldSd, WorldUnet, WorldVae
    from safeclip.sd import models as sd
    from safeclip.sd.pipeline import assemble

    vae_cfg = WorldVae(block_out_channels=[8, 16], norm_num_groups=4)
    text = CLIPTextModel.from_pretrained(clip_dir)
    torch.manual_seed(0)
    vae = sd.build_vae(vae_cfg, size)
    unet = sd.build_unet(WorldUnet(block_out_channels=[8, 16], attention_head_dim=4, norm_num_groups=4),
                         sd.latent_size(vae_cfg, size), vae_cfg.latent_channels, text.config.hidden_size)
    pipe = assemble(vae, unet, text, CLIPTokenizer.from_pretrained(clip_dir),
                    sd.sample_scheduler(sd.train_scheduler(WorldSd(vae=vae_cfg))))
    pipe.save_pretrained(out, safe_serialization=True)


def bert_tokenizer(out: Path, texts: list[str]):
    from transformers import BertTokenizerFast

    words = sorted({w for t in texts for w in t.lower().replace(",", " ").replace(".", " ").split()})
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "."] + words) + "\n")
    return BertTokenizerFast(str(out / "vocab.txt"))


def bert_classifier(out: Path, texts: list[str]) -> None:
    """SFW/NSFW like michellejieli/NSFW_text_classifier; weights large enough that P(NSFW) varies by text."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = bert_tokenizer(out, texts)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=128, id2label={0: "SFW", 1: "NSFW"}, label2id={"SFW": 0, "NSFW": 1}))
    with torch.no_grad():  # BERT's init (std 0.02) gives every text the same P(NSFW)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def bert_encoder(out: Path, texts: list[str]) -> None:
    from transformers import BertConfig, BertModel

    tok = bert_tokenizer(out, texts)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=128)).save_pretrained(
        out, safe_serialization=True)
    tok.save_pretrained(out)


def coco(root: Path, captions: list[str], n_train: int, n_val: int) -> None:
    """COCO 2017's layout: annotations/captions_{train,val}2017.json and {train,val}2017/<id>.jpg."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    k = 0
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for _ in range(n):
            name = f"{k:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / split / name)
            images.append({"id": k, "file_name": name, "height": 48, "width": 64})
            anns.append({"id": 10_000 + k, "image_id": k, "caption": captions[k % len(captions)]})
            k += 1
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns}))


def q16_prompts(path: Path, width: int) -> None:
    """Q16's two prompt embeddings [benign, inappropriate] as safetensors (key `prompts`), random unit vectors."""
    from safetensors.torch import save_file

    prompts = torch.nn.functional.normalize(torch.randn(2, width, generator=torch.Generator().manual_seed(0)), dim=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompts": prompts}, str(path))


def i2p_csv(path: Path, n: int) -> None:
    """I2P's columns (prompt, categories, hard, inappropriate_percentage, ...)."""
    cats = ["sexual", "hate", "violence", "shocking", "illegal activity", "self-harm", "harassment"]
    lines = ["prompt,categories,hard,inappropriate_percentage,nudity_percentage,lexica_url,sd_safety_percentage,"
             "prompt_toxicity,sd_seed,sd_guidance_scale,sd_image_width,sd_image_height"]
    for i in range(n):
        lines.append(f'"a dark street scene number {i}","{cats[i % len(cats)]}, {cats[(i + 2) % len(cats)]}",'
                     f"{i % 2},50.0,0.0,https://lexica.art/x,10.0,0.1,{i},7,512,512")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
