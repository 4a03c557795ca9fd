"""Concept tags for LLM-written unsafe captions (COCO path): learned from the words the curated pairs add."""

from safeclip.llm.concepts import ConceptTagger

PAIRS = [
    {"safe": "a man in a kitchen", "unsafe": "a man in a kitchen holding a bloody knife", "tag": "violence"},
    {"safe": "a dog on a sofa", "unsafe": "a dog on a sofa next to a pile of cocaine and a syringe",
     "tag": "drug use"},
    {"safe": "a street at night", "unsafe": "a street at night with hateful slogans on the walls", "tag": "hate"},
    {"safe": "two people at a table", "unsafe": "two people at a table, one stabbing the other with a knife",
     "tag": "violence"},
]


def test_tags_from_the_added_words():
    tag = ConceptTagger.from_pairs(PAIRS)
    assert tag("a cat on a bed", "a cat on a bed beside a knife covered in blood") == "violence"
    assert tag("a park", "a park full of people injecting drugs with a syringe") == "drug use"
    assert tag("a bus stop", "a bus stop covered in hateful slogans") == "hate"
    # no known added word: still a real concept (the most frequent one), never None
    assert tag("a boat", "a boat on a lake") == "violence"


def test_visu_tags_llm_rows_and_keeps_given_tags():
    """COCO path: visu rows had tag None, so every text-to-image rate per concept fell into `unknown`."""
    from collections import Counter

    from stages.visu import with_concept_tags

    def shard(rows, seed):
        return [{"safe": s, "nsfw": n, "tag": t} for s, n, t in rows], Counter(kept=len(rows))

    make = with_concept_tags(shard, ConceptTagger.from_pairs(PAIRS))
    out, stats = make([("a cat", "a cat next to a bloody knife", None), ("x", "x with hateful slogans", "hate"),
                       ("a road", "a road with a syringe and cocaine", None)], 0)
    assert [r["tag"] for r in out] == ["violence", "hate", "drug use"] and stats["kept"] == 3
