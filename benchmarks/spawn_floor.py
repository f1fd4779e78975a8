"""A dataset that reads nothing, for bench_loaders' spawn ceiling.

What a spawned DataLoader costs before any chip is read: each worker is a new interpreter that
imports torch (about 1 s of CPU here) and unpickles its dataset. ``ZeroChips`` returns samples
shaped like ``ChipDataset``'s (float32 zeros, the same metadata keys) at no cost, so a spawn
epoch over it measures torch's start-up and collate alone: no dataset can beat it. It is in a
module of its own because spawned workers import the dataset's class by name.
"""

from __future__ import annotations

import numpy as np


class ZeroChips:
    """``n`` samples of ``bands`` x ``size`` x ``size`` float32 zeros."""

    def __init__(self, n: int, bands: int, size: int = 256) -> None:
        self.n, self.bands, self.size = n, bands, size
        self.platforms = np.full(n, "sentinel-2-l2a", dtype=object)

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [
            {"pixels": np.zeros((self.bands, self.size, self.size), np.float32),
             "chipid": str(i), "platform": "sentinel-2-l2a", "item_id": "", "date": "",
             "lon": 0.0, "lat": 0.0}
            for i in indices
        ]
