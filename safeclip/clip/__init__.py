"""CLIP models: the world's tiny CLIP, hub/path loading, open_clip conversion, encoding."""
