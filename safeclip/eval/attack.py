"""A white-box prompt attack on a text tower: greedy coordinate search over the prompt's tokens with a budget of
k replaced tokens (GCG, Zou et al. 2023; MMA-Diffusion, Yang et al. 2024), guided by the gradient with respect
to one-hot tokens.

The attacker wants a prompt whose embedding under the made-safe tower lands where the *base* tower puts the
unsafe caption, so that retrieval and Stable Diffusion bring the unsafe content back. The objective is one minus
that cosine similarity. Each step scores the most promising single-token substitutions (ranked by the
gradient; all of them when `top_k` is None, which a word-level vocabulary affords), keeps the best one if it
lowers the objective, and stops when none does: the best-so-far objective never rises. A substitution is legal
while at most k positions differ from the caption.

With banned words the caption's unsafe words must go (they are replaced first, by `init_token`, and count
against the budget) and may never come back, so the attack must find a detour.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from safeclip.clip.model import text_embeddings
from safeclip.eval.retrieval import topk_indices

# candidate prompts scored per forward pass: the world text tower scored 15.7k prompts in 0.90 s at 1,024 a pass
# against 1.34 at 4,096 (one thread; 0.56 against 0.85 at two): the activations of 4,096 overflow the caches
CHUNK = 1024


@dataclass
class AttackResult:
    slots: torch.Tensor  # [n, L] the attacked prompts' token ids (no bos/eos)
    start_loss: torch.Tensor  # [n] objective at the start
    loss: torch.Tensor  # [n] objective at the end
    steps: torch.Tensor  # [n] substitutions kept
    queries: torch.Tensor  # [n] candidate prompts scored
    history: list[torch.Tensor]  # per step, the [n] best-so-far objective


def banned_pattern(words: Sequence[str]) -> re.Pattern | None:
    words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not words:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def contains_banned(text: str, pattern: re.Pattern | None) -> bool:
    return pattern is not None and pattern.search(text) is not None


def caption_tokens(tokenizer, caption: str, pattern: re.Pattern | None, max_tokens: int
                   ) -> tuple[list[int], list[int]]:
    """The caption's token ids (no specials) and the positions of the tokens that spell a banned word."""
    text = " ".join(caption.split())
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_tokens], enc["offset_mapping"][:max_tokens]
    spans = [m.span() for m in pattern.finditer(text)] if pattern is not None else []
    banned = [i for i, (a, b) in enumerate(offsets) if any(a < e and s < b for s, e in spans)]
    return ids, banned


def allowed_tokens(tokenizer, vocab_size: int, pattern: re.Pattern | None) -> torch.Tensor:
    """[vocab] mask of the tokens an attacker may place: no special token, none that spells a banned word."""
    mask = torch.ones(vocab_size, dtype=torch.bool)
    for i in set(tokenizer.all_special_ids):
        if 0 <= i < vocab_size:
            mask[i] = False
    if pattern is not None:
        for i in mask.nonzero().squeeze(1).tolist():
            if contains_banned(tokenizer.decode([i]), pattern):
                mask[i] = False
    if not mask.any():
        raise ValueError("no token is left for the attack once special and banned tokens are removed")
    return mask


class TextObjective:
    """1 - cos(projected text embedding of bos + slots + eos, its target), and its gradient w.r.t. one-hot slots."""

    def __init__(self, model, bos: int, eos: int):
        self.model, self.bos, self.eos = model, bos, eos
        self.embedding = model.text_model.embeddings.token_embedding
        self.device = self.embedding.weight.device

    def _ids(self, slots: torch.Tensor) -> torch.Tensor:
        n = len(slots)
        return torch.cat([torch.full((n, 1), self.bos), slots, torch.full((n, 1), self.eos)], 1).to(self.device)

    def _features(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(text_embeddings(self.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
                           .float(), dim=-1)

    @torch.no_grad()
    def loss(self, slots: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor | None = None) -> torch.Tensor:
        """Objective of each candidate `slots` [c, L] against target `owner[c]` (default: target c)."""
        owner = torch.arange(len(slots)) if owner is None else owner
        out = []
        for a in range(0, len(slots), CHUNK):
            sim = (self._features(self._ids(slots[a:a + CHUNK])) * targets[owner[a:a + CHUNK]].to(self.device)).sum(-1)
            out.append(1.0 - sim.cpu())
        return torch.cat(out) if out else torch.empty(0)

    def loss_and_grad(self, slots: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective [n] and its gradient [n, L, vocab] w.r.t. the one-hot slot tokens (GCG's token ranking)."""
        n, k = slots.shape
        weight = self.embedding.weight
        onehot = F.one_hot(slots.to(self.device), weight.shape[0]).to(weight.dtype).requires_grad_(True)

        def swap(_module, _inputs, output):  # the slots' embeddings become one-hot @ W, so they carry a gradient
            output = output.clone()
            output[:, 1:k + 1] = onehot @ weight
            return output

        handle = self.embedding.register_forward_hook(swap)
        try:
            with torch.enable_grad():
                loss = 1.0 - (self._features(self._ids(slots)) * targets.to(self.device)).sum(-1)
                (grad,) = torch.autograd.grad(loss.sum(), onehot)
        finally:
            handle.remove()
        return loss.detach().cpu(), grad.float().cpu()


def _candidates(grad: torch.Tensor, allowed: torch.Tensor, top_k: int | None, search_width: int | None,
                generator: torch.Generator) -> torch.Tensor:
    """[c, 2] (position, token) substitutions for one prompt: the top_k tokens per position by -gradient (every
    allowed token when top_k is None), all pairs, or search_width of them drawn at random."""
    length = grad.shape[0]
    tokens = allowed.nonzero().squeeze(1)
    if top_k is not None and top_k < len(tokens):
        per_position = tokens[(-grad[:, tokens]).topk(top_k, dim=1).indices]  # [L, top_k]
    else:
        per_position = tokens.expand(length, -1)
    pairs = torch.stack([torch.arange(length).repeat_interleave(per_position.shape[1]), per_position.reshape(-1)], 1)
    if search_width is not None and search_width < len(pairs):
        pairs = pairs[torch.randperm(len(pairs), generator=generator)[:search_width]]
    return pairs


def greedy_coordinate_attack(objective: TextObjective, targets: torch.Tensor, origin: torch.Tensor,
                             init: torch.Tensor, allowed: torch.Tensor, *, max_changes: int | torch.Tensor, steps: int,
                             top_k: int | None, search_width: int | None, seed: int,
                             decode: Callable[[torch.Tensor], str] | None = None,
                             pattern: re.Pattern | None = None) -> AttackResult:
    """Attack every prompt at once. `origin` [n, L] are the captions, `init` [n, L] where the search starts
    (the captions with their banned tokens replaced); at most `max_changes` positions (one budget for all, or
    [n] per prompt) may differ from `origin`.
    A candidate is kept only if it strictly lowers the prompt's objective and (with `decode` and a banned
    `pattern`) its decoded text holds no banned word, which catches words that sub-word tokens spell together."""
    n = len(init)
    budget = torch.as_tensor(max_changes).expand(n)
    generator = torch.Generator().manual_seed(seed)
    slots = init.clone()
    loss = objective.loss(slots, targets)
    result = AttackResult(slots, loss.clone(), loss, torch.zeros(n, dtype=torch.long),
                          torch.zeros(n, dtype=torch.long), [loss.clone()])
    active = torch.ones(n, dtype=torch.bool)
    for _ in range(steps):
        idx = active.nonzero().squeeze(1).tolist()
        if not idx or slots.shape[1] == 0:
            break
        _, grad = objective.loss_and_grad(slots[idx], targets[idx])
        cand, owner = [], []
        for j, i in enumerate(idx):
            pairs = _candidates(grad[j], allowed, top_k, search_width, generator)
            c = slots[i].expand(len(pairs), -1).clone()
            c[torch.arange(len(pairs)), pairs[:, 0]] = pairs[:, 1]
            keep = (c != slots[i]).any(1) & ((c != origin[i]).sum(1) <= budget[i])
            cand.append(c[keep])
            owner.append(torch.full((int(keep.sum()),), i, dtype=torch.long))
        owner_t, cand_t = torch.cat(owner), torch.cat(cand)
        if not len(owner_t):
            break
        cand_loss = objective.loss(cand_t, targets, owner_t)
        order = torch.argsort(cand_loss, stable=True)
        order = order[torch.argsort(owner_t[order], stable=True)]  # grouped by prompt, best first within each
        counts = torch.bincount(owner_t, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        improved = torch.zeros(n, dtype=torch.bool)
        for i in idx:
            result.queries[i] += int(counts[i])
            for r in order[starts[i]:starts[i] + counts[i]].tolist():
                if cand_loss[r] >= loss[i]:
                    break
                if decode is not None and contains_banned(decode(cand_t[r]), pattern):
                    continue
                slots[i], loss[i] = cand_t[r], cand_loss[r]
                result.steps[i] += 1
                improved[i] = True
                break
        result.history.append(loss.clone())
        active &= improved
    result.slots, result.loss = slots, loss
    return result


def legal_fillings(origin: torch.Tensor, forced: Sequence[int], allowed: torch.Tensor, max_changes: int
                   ) -> torch.Tensor:
    """Every prompt the search may reach from one caption: the forced positions replaced by an allowed token,
    up to max_changes positions in all differing from the caption (for checking the search by enumeration).
    With more forced positions than max_changes no prompt is legal: the caller must give the budget the search
    had, max(k, len(forced)).

    Rows come in a fixed order (by the number of extra changes, then the changed positions, then the tokens as
    itertools.product gives them), built a block of tensor ops per set of positions: row by row in Python this
    took ~0.3 s a caption, a quarter of eval_attack's check."""
    if len(forced) > max_changes:
        raise ValueError(f"{len(forced)} forced positions cannot be filled within {max_changes} changes")
    tokens = allowed.nonzero().squeeze(1).to(origin.dtype)
    free = [p for p in range(len(origin)) if p not in forced]
    blocks = [origin.new_empty((0, len(origin)))]
    for extra in range(max_changes - len(forced) + 1):
        for positions in itertools.combinations(free, extra):
            changed = [*forced, *positions]
            fills = _product(tokens, len(changed))
            # a free position given its own token back is counted among the fillings with fewer changes
            fills = fills[(fills[:, len(forced):] != origin[list(positions)]).all(1)]
            rows = origin.repeat(len(fills), 1)
            rows[:, changed] = fills
            blocks.append(rows)
    return torch.cat(blocks)


def _product(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """[len(tokens) ** n, n]: every n-tuple of tokens, in itertools.product's order (the last position fastest)."""
    if n == 0:
        return tokens.new_empty((1, 0))
    return torch.cartesian_prod(*[tokens] * n).reshape(-1, n)


def count_fillings(length: int, n_forced: int, n_tokens: int, max_changes: int) -> int:
    """An upper bound on len(legal_fillings(...)), to decide whether enumerating is affordable."""
    if n_forced > max_changes:
        raise ValueError(f"{n_forced} forced positions cannot be filled within {max_changes} changes")
    return sum(len(list(itertools.combinations(range(length - n_forced), e))) * n_tokens ** (n_forced + e)
               for e in range(max(max_changes - n_forced + 1, 0)))


def exhaustive_optimum(objective: TextObjective, origin: torch.Tensor, forced: Sequence[int], target: torch.Tensor,
                       allowed: torch.Tensor, max_changes: int,
                       decode_rows: Callable[[torch.Tensor], Sequence[str]] | None = None,
                       pattern: re.Pattern | None = None) -> float | None:
    """The best objective over every legal filling of one caption: the optimum the search is checked against.
    Legal as for the search: within the budget, and (with `decode_rows`, the texts of a [n, L] batch of token
    rows, and a banned `pattern`) no banned word in the decoded text, which sub-word tokens can spell together.
    The rows are decoded as one batch: one at a time, ~16k rows took ~0.4 s a caption. None when no filling is
    legal (nothing to check)."""
    fills = legal_fillings(origin, forced, allowed, max_changes)
    if decode_rows is not None and pattern is not None:
        fills = fills[[not contains_banned(text, pattern) for text in decode_rows(fills)]]
    if not len(fills):
        return None
    return float(objective.loss(fills, target[None], torch.zeros(len(fills), dtype=torch.long)).min())


def top1_unsafe(queries: torch.Tensor, gallery: torch.Tensor, gallery_unsafe: torch.Tensor) -> torch.Tensor:
    """[n] whether each query's most similar gallery item is unsafe (cosine)."""
    return torch.as_tensor(gallery_unsafe, dtype=torch.bool)[topk_indices(queries, gallery, 1)[:, 0]]
