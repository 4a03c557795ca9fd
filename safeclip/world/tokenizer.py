"""World tokenizers trained with the `tokenizers` library on world text.

Word-level: the world's language is a closed vocabulary, so one token per word gives the tiny models the
easiest possible job. Special ids are [pad, unk, bos, eos] = [0, 1, 2, 3]: EOS must not be id 2, or
CLIPTextModel falls back to legacy argmax pooling.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def train_word_tokenizer(corpus: Iterable[str], *, append_eos: bool, model_max_length: int) -> PreTrainedTokenizerFast:
    """BOS-only for the causal LM (trl appends EOS itself); BOS+EOS for CLIP text (it pools at EOS)."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIALS, show_progress=False))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    single = "<s> $A </s>" if append_eos else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=model_max_length)
