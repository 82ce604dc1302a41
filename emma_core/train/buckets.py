"""Aspect-ratio buckets: pictures train at (about) the resolution's area in the shape closest to their own, not
as square centre crops (users' photos are rarely square).

    sizes = bucket_sizes(512)                 # [(256, 1024)?, ..., (512, 512), ..., (704, 320)?] within max_ratio
    w, h = nearest_bucket(4032, 3024, 512)    # (576, 448): area <= 512^2, sides in steps of 64

Every batch comes from one bucket (loop.BucketOrder), so a batch's latents stack. A resolution that is not a
multiple of 64 (the tiny worlds the tests train in, or 544) gets one square bucket.
"""
from __future__ import annotations

STEP = 64
MAX_RATIO = 2.0


def bucket_step(resolution: int) -> int:
    """64, or the resolution itself (one square bucket) when it is not a multiple of 64: a 96 px run would
    otherwise get 64x128 and 128x64 only, and train a square photo as a 2:1 crop."""
    return STEP if resolution % STEP == 0 else resolution


def bucket_sizes(resolution: int, max_ratio: float = MAX_RATIO) -> list[tuple[int, int]]:
    """(width, height) pairs: sides multiples of the step, area at most resolution^2 and as large as the step
    allows, long side / short side at most `max_ratio`; sorted by aspect (width / height)."""
    step, area = bucket_step(resolution), resolution * resolution
    sizes = set()
    for width in range(step, int(resolution * max_ratio) + 1, step):
        height = (area // width) // step * step
        if height < step:
            continue
        for w, h in ((width, height), (height, width)):
            if max(w, h) / min(w, h) <= max_ratio + 1e-9:
                sizes.add((w, h))
    sizes.add((resolution, resolution))
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0]))


def nearest_bucket(width: int, height: int, resolution: int, max_ratio: float = MAX_RATIO) -> tuple[int, int]:
    """The bucket whose aspect is closest to width / height (compared in log space: 2:1 and 1:2 are as far
    from square); ties go to the larger area."""
    import math

    aspect = math.log(width / height)
    return min(bucket_sizes(resolution, max_ratio),
               key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), -s[0] * s[1]))
