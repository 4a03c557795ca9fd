"""Ways of making a CLIP safe: Safe-CLIP and SafeR-CLIP (trained with LoRA, one trainer), UWM (training-free).

`runners.py` runs one by name for the make_safe stage; the losses and the UWM edit are pure functions."""
