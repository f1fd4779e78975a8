"""Batches from the datasets' samples: ``collate_chips`` for ``ChipDataset`` (the data
module's, and the one to pass to a ``DataLoader`` of your own) and ``collate_stacks`` for
``StackDataset`` (the stack data module's). Needs torch only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from stacchip_core.errors import StackError


def batch_of(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """The one array whose rows ``arrays`` are, in order, or None.

    ``ChipDataset`` returns a batch's pixels as the rows of one ``(B, bands, h, w)`` array;
    a collate that finds them so takes that array instead of stacking a copy.

    Args:
        arrays: A batch's arrays.

    Returns:
        Their common base when ``arrays[i]`` is exactly its row ``i`` for every ``i`` and
        it has no other rows; None otherwise (a transform made new arrays, rows reordered
        or left out...).
    """
    if not len(arrays):
        return None
    base = arrays[0].base
    if (not isinstance(base, np.ndarray) or len(base) != len(arrays)
            or base.shape[1:] != arrays[0].shape or not base.flags.c_contiguous):
        return None
    start, step = base.ctypes.data, base.strides[0]
    for i, a in enumerate(arrays):
        if (a.base is not base or a.ctypes.data != start + i * step or a.shape != base.shape[1:]
                or a.strides != base.strides[1:] or a.dtype != base.dtype):
            return None
    return base


def stacked(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """A batch's arrays as one tensor ``(B, ...)``, copied at most once.

    In a DataLoader worker, torch's own collate stacks them straight into the shared memory
    that carries the batch to the main process (a tensor stacked in ordinary memory is copied
    there again on its way: benchmarks/bench_collate.py measured 74-75 CPU ms per batch of 8
    RGB stacks of 12 steps in 2 workers, against 94-109 with ``np.stack``). In the main
    process, arrays that are the rows of one array (``batch_of``) are that array, not copied;
    others are stacked by numpy (``torch.stack`` took 62-64 ms for those stacks there on 2
    OpenMP threads, ``np.stack`` 33-36).

    Args:
        arrays: Arrays of one shape and dtype.

    Returns:
        The stacked tensor.
    """
    if get_worker_info() is not None:
        return default_collate([torch.from_numpy(np.asarray(a)) for a in arrays])
    whole = batch_of(arrays)
    return torch.from_numpy(whole if whole is not None else np.stack(arrays))


def collate_chips(samples: list[dict]) -> dict:
    """One batch from ``ChipDataset.__getitems__``'s samples.

    In the main process (a loader without workers), the pixels of a batch the reader wrote as
    one array (``ChipDataset``'s, unless a transform replaced them) become the batch's tensor
    as they are, without a copy.

    Args:
        samples: the samples of one batch, all of one platform.

    Returns:
        ``pixels`` float32 tensor (B, bands, cs, cs), ``chipid``/``item_id``/``date`` lists,
        ``platform`` (one string), ``lon``/``lat`` tensors.
    """
    return {
        "pixels": stacked([s["pixels"] for s in samples]),
        "chipid": [s["chipid"] for s in samples],
        "item_id": [s["item_id"] for s in samples],
        "date": [s["date"] for s in samples],
        "platform": samples[0]["platform"],
        "lon": torch.tensor([s["lon"] for s in samples]),
        "lat": torch.tensor([s["lat"] for s in samples]),
    }


def _stack_part(parts: list[dict]) -> dict:
    time = np.stack([p["time"] for p in parts])
    return {"pixels": stacked([p["pixels"] for p in parts]),
            "valid": stacked([p["valid"] for p in parts]),
            "time": torch.from_numpy(time), "present": torch.from_numpy(time >= 0)}


def collate_stacks(samples: list[dict]) -> dict | None:
    """One batch from ``StackDataset.__getitems__``'s samples (one anchor platform, every
    stack padded or cut to the same steps T).

    Args:
        samples: the samples of one batch.

    Returns:
        ``pixels`` float32 tensor (B, T, C, H, W), ``valid`` bool (B, T, H, W), ``time`` int64
        (B, T) days since 1970-01-01 (-1 for padding), ``present`` bool (B, T) (False for
        padding steps), ``dates`` (per stack, its steps' ISO dates, padding left out),
        ``stackid`` list, ``platform`` (one string), ``lon``/``lat`` tensors, and ``sensors``
        ``{platform: {"pixels", "valid", "time", "present"}}`` for the other platforms of
        multi-sensor stacks. None when every stack of the batch was skipped
        (``errors="skip"``): Lightning skips a step whose batch is None only if the module
        does, so check for it.

    Raises:
        StackError: the stacks of the batch have different sets of platforms.
    """
    if not samples:
        return None
    out: dict[str, Any] = {
        **_stack_part(samples),
        "dates": [s["dates"] for s in samples],
        "stackid": [s["stackid"] for s in samples],
        "platform": samples[0]["platform"],
        "lon": torch.tensor([s["lon"] for s in samples]),
        "lat": torch.tensor([s["lat"] for s in samples]),
    }
    names = sorted(samples[0].get("sensors", {}))
    for s in samples:
        if sorted(s.get("sensors", {})) != names:
            raise StackError(
                f"stacks {samples[0]['stackid']} and {s['stackid']} of one batch hold different "
                f"platforms ({names} vs {sorted(s.get('sensors', {}))}); "
                "build them with the same --with"
            )
    if names:
        out["sensors"] = {p: _stack_part([s["sensors"][p] for s in samples]) for p in names}
    return out
