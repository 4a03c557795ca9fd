"""`judged_rewrites`: each named set rewritten with its own sampling arguments and judged by the world oracle into
`<prefix>.<set>.<figure>` metrics (SFT's and DPO's world figures), on hand-picked rewrites."""

from __future__ import annotations

import logging

from safeclip.llm import quality

SAFE = "a cyan square on the left on a white background"
UNSAFE = "a cyan knife on the left on a white background"  # the same scene, an unsafe object


def test_each_set_is_rewritten_with_its_arguments_and_judged(monkeypatch) -> None:
    calls = []

    def fake_rewrite(model, tok, captions, *, batch_size, max_new_tokens, seed, **kwargs):
        calls.append((list(captions), batch_size, max_new_tokens, seed, kwargs))
        return [[UNSAFE] if kwargs else [c] for c in captions]  # sampling: the unsafe twin; greedy: a copy

    monkeypatch.setattr(quality, "rewrite", fake_rewrite)
    out = quality.judged_rewrites(None, None, {"greedy": ([SAFE], {}), "t1": ([SAFE], {"do_sample": True})},
                                  prefix="dpo", batch_size=4, max_new_tokens=9, seed=3,
                                  log=logging.getLogger("test"))
    assert calls == [([SAFE], 4, 9, 3, {}), ([SAFE], 4, 9, 3, {"do_sample": True})]
    assert out["dpo.greedy.copied_input"] == 1.0 and out["dpo.greedy.unsafe"] == 0.0
    assert out["dpo.t1.parse"] == out["dpo.t1.unsafe"] == out["dpo.t1.scene_kept"] == 1.0
    assert out["dpo.t1.copied_input"] == 0.0 and out["dpo.t1.n"] == out["dpo.greedy.n"] == 1
    assert {k.split(".")[1] for k in out} == {"greedy", "t1"} and all(k.startswith("dpo.") for k in out)
