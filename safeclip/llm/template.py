"""The paper's Alpaca-style rewrite prompt (Safe-CLIP, footnote 1)."""

PROMPT = ("Below is an input string. Write a response that appropriately converts the input in its unsafe version\n"
          "### Input:\n{safe}\n### Response:\n")


def prompt_for(safe: str) -> str:
    return PROMPT.format(safe=safe)
