"""Plain-PyTorch core of the EMMA pack: ELLA's connector, flan-T5 text features, EMMA's gated branches.

Nothing in this package imports ComfyUI, so it can be tested, trained and reused on its own.
"""
