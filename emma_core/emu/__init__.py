"""Emu quality-tuning (Dai et al. 2023, "Photogenic Needles in a Haystack") for SD1.5 UNets.

    curate.curate_folder(folder, CurationConfig)  automatic filters + report + contact sheet + review list
    curate.read_review_list(path)                 the human pass: keep / reject per file
    lora.inject_lora(unet, targets, rank, alpha)  LoRA on nn.Linear / nn.Conv2d by module name (forward hooks)
    lora.LoRASet.to_kohya()                       the kohya key layout ComfyUI's stock LoraLoader applies
    quality_tune.quality_tune(...)                Emu's recipe on the shared trainer (emma_core.train.loop)
    run.curate(...), run.tune(...)                a whole curation / tuning run, as both front ends start it

Nothing here imports ComfyUI: the front ends (nodes/emu_nodes.py, scripts/emu_tune.py) pass the user's model,
CLIP and VAE in, and what needs ComfyUI's model management as callables.
"""
