"""Ways of making a CLIP safe: Safe-CLIP (trained with LoRA); more methods plug in beside it."""
