"""A ViSU concept tag for an unsafe caption the LLM wrote from a safe one (COCO path), so that per-concept rates
downstream (text-to-image, % unsafe) do not collapse into one `unknown`.

The curated pairs are tagged by hand, and what makes a pair's unsafe caption unsafe is the words it adds to the
safe one ("... holding a bloody knife"). A multinomial naive Bayes over those added words, one class per
concept, tags a new (safe, unsafe) pair by the words its unsafe caption adds. No model, no download, the same
tag on every run. A caption that adds no word seen in the pairs gets the most frequent concept.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping

_WORD = re.compile(r"[a-z]+")
# words that say nothing about a concept
_STOP = frozenset("a an the of in on at to and or with by for from is are its it his her their one other".split())


def added_words(safe: str, unsafe: str) -> list[str]:
    """The words of `unsafe` that `safe` does not have (lower case, stop words out)."""
    have = set(_WORD.findall(safe.lower()))
    return [w for w in _WORD.findall(unsafe.lower()) if w not in have and w not in _STOP]


class ConceptTagger:
    def __init__(self, counts: Mapping[str, Counter], prior: Counter):
        self.counts, self.prior = dict(counts), prior
        self.vocab = set().union(*counts.values()) if counts else set()
        self.totals = {c: sum(v.values()) for c, v in counts.items()}

    @classmethod
    def from_pairs(cls, pairs: Iterable[Mapping[str, str]]) -> ConceptTagger:
        counts: dict[str, Counter] = {}
        prior: Counter = Counter()
        for p in pairs:
            prior[p["tag"]] += 1
            counts.setdefault(p["tag"], Counter()).update(added_words(p["safe"], p["unsafe"]))
        if not prior:
            raise ValueError("no curated pairs to learn concept tags from")
        return cls(counts, prior)

    def __call__(self, safe: str, unsafe: str) -> str:
        words = [w for w in added_words(safe, unsafe) if w in self.vocab]
        n, v = sum(self.prior.values()), len(self.vocab)

        def score(c: str) -> float:
            return math.log(self.prior[c] / n) + sum(
                math.log((self.counts[c][w] + 1) / (self.totals[c] + v)) for w in words)
        # ties (no known word): the most frequent concept, then the name, so the order of the pairs does not matter
        return max(sorted(self.prior), key=lambda c: (score(c) if words else 0.0, self.prior[c]))
