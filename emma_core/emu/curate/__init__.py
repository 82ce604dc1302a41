"""Curation for quality-tuning: automatic filters, then a human pass.

    filters   curate_folder: the automatic filters, their report (CurationResult)
    scorers   the CLIP-score and aesthetic-score functions, from the user's CLIP vision model and predictor
    review    the review list people edit (keep / reject per file), honoured by the tuning
    sheet     the contact sheet to review from

Emu (Dai et al. 2023) curates in stages: automatic filters (aesthetic score, CLIP score, size, aspect ratio,
...) cut the pool, then people pick the few hundred to few thousand "photogenic" images. Here:

    result = curate_folder(folder, CurationConfig(min_side=512), clip_score=..., aesthetic_score=...)
    print(result.report())                     every removed file, which filter removed it and why
    write_review_list(folder / REVIEW_NAME, result)
    pages = contact_sheet(result)              PIL images to review (removed files framed red, with the reason)
    ... the user edits the review list (keep / reject per file) ...
    review = read_review_list(folder / REVIEW_NAME)
    kept, skipped = apply_review(names, review)   what the tuning uses (only files marked keep)

Filters run in this order and each file is removed by the first one it fails (its reason names that filter):
1. readable   the file opens as an image
2. size       the shorter side is at least `min_side` px
3. aspect     width / height lies in [min_aspect, max_aspect]
4. duplicate  near-duplicates by perceptual hash (DCT pHash, 64 bits): of a group within `dedupe_distance`
              bits, the largest image (then the first by name) is kept, the others name it in their reason
5. clip       optional: CLIP score of (image, its .txt caption) >= clip_min, from a scorer the user provides
6. aesthetic  optional: aesthetic score >= aesthetic_min, from a predictor the user provides
No thresholds were published by Emu; the defaults are conventional for SD1.5 fine-tuning.

The review list is a small CSV users edit in any text editor or spreadsheet:

    # comment lines start with '#'
    file,decision,auto,reason
    0001.jpg,keep,keep,
    0002.jpg,reject,reject,size: 300x200 (shorter side 200 < 512 px)

`decision` is what the tuning honours (keep / reject; y/n, yes/no, 1/0, k/r and x are accepted too);
`auto` is what the filters said. Re-running the curation keeps every decision a person changed (decision !=
auto) and updates the rest. Files not in the list are not used by the tuning (they were never reviewed).
"""
from .filters import (FILTERS, CurationConfig, CurationResult, ImageInfo, Removal, curate_folder, hamming,
                      list_images, open_image, phash)
from .review import REVIEW_NAME, Decision, apply_review, read_review_list, write_review_list
from .scorers import aesthetic_head, aesthetic_scorer, clip_scorer
from .sheet import contact_sheet

__all__ = ["FILTERS", "REVIEW_NAME", "CurationConfig", "CurationResult", "Decision", "ImageInfo", "Removal",
           "aesthetic_head", "aesthetic_scorer", "apply_review", "clip_scorer", "contact_sheet", "curate_folder",
           "hamming", "list_images", "open_image", "phash", "read_review_list", "write_review_list"]
