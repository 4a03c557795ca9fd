"""`safeclip export`: every artefact loads and reproduces the made-safe model; the card says what it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTextModel

from safeclip.clip.model import ClipBundle, image_embeddings, text_embeddings, tokenize
from safeclip.clip.open_clip_convert import open_clip_to_hf
from safeclip.export import main
from safeclip.world.grammar import vocabulary

REPO = Path(__file__).resolve().parents[2]
ARCH = "safeclip-test-export-openclip"  # a tiny open_clip config registered below, as test_open_clip_convert does
OC_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
OC_TEXTS = ["a photo of a cat", "Hello, World!!", "", "a caption far too long to fit in twelve tokens, so cut"]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _workspace(root: Path, bundle: ClipBundle, method: str, params: dict | None = None) -> Path:
    bundle.save(root / "models" / "safe" / method)
    (root / "params.yaml").write_text(yaml.safe_dump(params or {}))
    return root


def _texts() -> list[str]:
    words = vocabulary()
    return [" ".join(words[:3]), " ".join(words[3:9]), words[-1]]


def test_export_world_model(tmp_path, tiny_bundle):
    root = _workspace(tmp_path / "ws", tiny_bundle, "safe_clip",
                      {"make_safe": {"safe_clip": {"learning_rate": 0.00123}}})
    (root / "models" / "base_clip").mkdir()  # a base without open_clip.json: no open_clip checkpoint
    _write_json(root / "metrics/retrieval/none.json", {"retrieval.t_to_v.r1": 74.5, "safeground.PU": 1.25})
    _write_json(root / "metrics/retrieval/safe_clip.json", {"retrieval.t_to_v.r1": 61.75, "safeground.PU": 33.5,
                                                            "unsafe_retrieved.unsafe_text.top1": 12.125})
    _write_json(root / "metrics/zeroshot/safe_clip.json", {"zeroshot.mean": 56.5})

    main(["export", "--method", "safe_clip", "--root", str(root)])
    out = root / "exports" / "safe_clip"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "clip", "text_encoder", "tokenizer"]
    assert not list(out.rglob("*.bin")) and not list(out.parent.glob(".*"))  # safetensors only, no temp left
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in out.rglob("*") if f.is_file())  # readable when shipped

    model = tiny_bundle.model.eval()
    batch = tokenize(tiny_bundle.tokenizer, _texts())
    pixels = torch.randn(3, 3, 32, 32)
    clip = CLIPModel.from_pretrained(out / "clip").eval()
    encoder = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert torch.equal(tok(_texts(), padding=True, return_tensors="pt")["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.allclose(text_embeddings(clip, batch), text_embeddings(model, batch), atol=1e-6)
        assert torch.allclose(image_embeddings(clip, pixels), image_embeddings(model, pixels), atol=1e-6)
        expected = model.text_model(**batch).last_hidden_state
        assert torch.allclose(encoder(**batch).last_hidden_state, expected, atol=1e-6)

    # SD's on-disk layout (what transformers v4, used by many diffusers installs, reads)
    assert all(k.startswith("text_model.") for k in load_file(out / "text_encoder" / "model.safetensors"))

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == {"library_name": "transformers", "tags": ["clip", "safety", "safe_clip"]}  # world: no base_model
    for text in ("Safe-CLIP", "safe_clip", "74.5", "61.75", "33.5", "1.25", "12.12", "56.5", "not evaluated",
                 "learning_rate: 0.00123", "profile: world", "tiny synthetic-world", "not usable for real images",
                 "StableDiffusionPipeline.from_pretrained", "CLIPTextModel.from_pretrained", "no open_clip checkpoint",
                 "git commit"):
        assert text in card, text
    params_block = card.split("`make_safe.safe_clip`:\n\n```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(params_block)["safe_clip"]["learning_rate"] == 0.00123

    # a re-export replaces the folder as a whole (atomic_dir), here into a chosen --out
    main(["export", "--method", "safe_clip", "--root", str(root), "--out", str(tmp_path / "elsewhere")])
    assert (tmp_path / "elsewhere" / "clip" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("oc_configs")
    (d / f"{ARCH}.json").write_text(json.dumps(OC_CFG))
    open_clip.add_model_config(d)
    return ARCH


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_export_open_clip_base(tmp_path, registered, quick_gelu):
    torch.manual_seed(0)
    oc = open_clip.CLIP(embed_dim=OC_CFG["embed_dim"], vision_cfg=OC_CFG["vision_cfg"], text_cfg=OC_CFG["text_cfg"],
                        quick_gelu=quick_gelu)
    with torch.no_grad():  # noise on every tensor, so a mis-mapped one changes the outputs
        for p in oc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf, tok, proc = open_clip_to_hf(oc.eval(), quick_gelu=quick_gelu, image_mean=open_clip.OPENAI_DATASET_MEAN,
                                    image_std=open_clip.OPENAI_DATASET_STD, image_size=32)
    source = f"open_clip:{ARCH}//weights/tiny.safetensors"
    root = _workspace(tmp_path, ClipBundle(hf, tok, proc), "uwm",
                      {"base": {"profile": "paper"}, "base_clip": {"source": source}})
    _write_json(root / "models/base_clip/open_clip.json", {"arch": ARCH, "pretrained": "/weights/tiny.safetensors"})

    main(["export", "--method", "uwm", "--root", str(root)])
    out = root / "exports" / "uwm"
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config == {"arch": ARCH, "force_quick_gelu": quick_gelu, "source": "/weights/tiny.safetensors"}
    loaded = open_clip.create_model(ARCH, force_quick_gelu=config["force_quick_gelu"]).eval()
    loaded.load_state_dict(load_file(out / "open_clip_model.safetensors"), strict=True)
    ids = open_clip.get_tokenizer(ARCH)(OC_TEXTS)
    reloaded = CLIPModel.from_pretrained(out / "clip").eval()
    with torch.no_grad():
        expected = reloaded.get_text_features(input_ids=ids).pooler_output
        assert (loaded.encode_text(ids) - expected).abs().max() < 1e-4
        assert (loaded.encode_text(ids) - oc.encode_text(ids)).abs().max() < 1e-4

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == source and front["tags"] == ["clip", "safety", "uwm"]
    assert "UWM" in card and f'open_clip.create_model("{ARCH}"' in card and "synthetic-world" not in card
    assert ("force_quick_gelu=True" in card) == quick_gelu
    assert "not evaluated" in card.lower()  # no metrics files at all


def test_open_clip_json_without_arch_is_an_input_error(tmp_path, tiny_bundle):
    from safeclip.io import InputError

    root = _workspace(tmp_path, tiny_bundle, "uwm")
    _write_json(root / "models/base_clip/open_clip.json", {"pretrained": None})
    with pytest.raises(SystemExit) as e:
        main(["export", "--method", "uwm", "--root", str(root)])
    assert e.value.code == 2 and not (root / "exports").exists()
    with pytest.raises(InputError, match="arch"):
        from safeclip.export import export
        export("uwm", root)


def test_missing_model_folder_is_an_input_error(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("{}\n")
    with pytest.raises(SystemExit) as e:
        main(["export", "--method", "safer_clip", "--root", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "models" / "safe" / "safer_clip") in err
    assert "dvc repro make_safe@safer_clip" in err
    assert not (tmp_path / "exports").exists()

    with pytest.raises(SystemExit) as e:  # an unknown method is argparse's error
        main(["export", "--method", "nope", "--root", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "safeclip.export", "export", "--method", "uwm", "--root",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "make_safe@uwm" in res.stderr and "Traceback" not in res.stderr
