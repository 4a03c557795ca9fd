"""Preference pairs for DPO: sample k rewrites per safe caption, score them, keep (best good, worst).

chosen = unsafe AND closest to the safe caption's scene; rejected = the worst candidate (safe, off-scene or
broken). Prompts whose candidates are all equally good or all bad teach nothing and give no pair.
Scorers are pluggable: the world's oracle, or (paper) an NSFW text classifier plus a sentence-similarity model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from safeclip.world.oracle import judge_rewrite


@dataclass(frozen=True)
class Scored:
    text: str
    score: float
    good: bool  # acceptable as "chosen": unsafe and on-scene


class Scorer(Protocol):
    def score(self, safe: str, candidates: Sequence[str]) -> list[Scored]: ...


class OracleScorer:
    """World: exact judgements from the scene the caption came from."""

    def score(self, safe: str, candidates: Sequence[str]) -> list[Scored]:
        out = []
        for c in candidates:
            v = judge_rewrite(safe, c)
            out.append(Scored(c, v.score, v.good))
        return out


class ModelScorer:
    """Paper: P(unsafe) from a text classifier + cosine similarity to the safe caption from a sentence encoder.

    Good = P(unsafe) >= threshold and similarity >= min_similarity; score = P(unsafe) + similarity.
    """

    def __init__(self, classifier_dir: str, unsafe_label: str, encoder_dir: str, threshold: float = 0.5,
                 min_similarity: float = 0.5, device: str = "cpu"):
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        from safeclip.hub import resolve_model_dir

        # Local folders (hub ids resolved through the cache: fail fast offline, refuse pickle-only weights)
        classifier_dir = resolve_model_dir(classifier_dir, param="dpo.models.nsfw_classifier")
        encoder_dir = resolve_model_dir(encoder_dir, param="dpo.models.similarity_model")
        self.cls_tok = AutoTokenizer.from_pretrained(classifier_dir, trust_remote_code=False)
        self.cls = AutoModelForSequenceClassification.from_pretrained(classifier_dir, use_safetensors=True,
                                                                      trust_remote_code=False).eval()
        labels = {v.lower(): int(k) for k, v in self.cls.config.id2label.items()}
        if unsafe_label.lower() not in labels:
            raise ValueError(f"{classifier_dir}: no label {unsafe_label!r} (has {sorted(labels)})")
        self.unsafe_idx = labels[unsafe_label.lower()]
        self.enc_tok = AutoTokenizer.from_pretrained(encoder_dir, trust_remote_code=False)
        self.enc = AutoModel.from_pretrained(encoder_dir, use_safetensors=True, trust_remote_code=False).eval()
        self.threshold, self.min_similarity = threshold, min_similarity
        self.cls.to(device)
        self.enc.to(device)

    @torch.no_grad()
    def p_unsafe(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.cls_tok(list(texts), return_tensors="pt", padding=True, truncation=True).to(self.cls.device)
        return self.cls(**enc).logits.softmax(-1)[:, self.unsafe_idx].cpu()

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.enc_tok(list(texts), return_tensors="pt", padding=True, truncation=True).to(self.enc.device)
        hidden = self.enc(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).cpu()

    def score(self, safe: str, candidates: Sequence[str]) -> list[Scored]:
        texts = [c if c.strip() else "." for c in candidates]
        p = self.p_unsafe(texts)
        emb = self.embed([safe, *texts])
        sim = emb[1:] @ emb[0]
        return [Scored(c, float(pi + si) if c.strip() else -1.0,
                       bool(c.strip()) and bool(pi >= self.threshold) and bool(si >= self.min_similarity))
                for c, pi, si in zip(candidates, p, sim, strict=True)]


def preference_pair(safe: str, scored: Sequence[Scored]) -> tuple[str, str] | None:
    """(chosen, rejected) or None when no candidate is good or all candidates score the same."""
    good = [s for s in scored if s.good]
    if not good:
        return None
    chosen = max(good, key=lambda s: s.score)
    rejected = min(scored, key=lambda s: s.score)
    if rejected.score >= chosen.score or rejected.text == chosen.text:
        return None
    return chosen.text, rejected.text
