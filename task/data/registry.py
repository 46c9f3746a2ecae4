"""Named datasets: hub ids, expected class counts, and which hub ids were checked to exist."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """What the data layer knows about one named dataset."""

    name: str
    hub_id: str  # Hugging Face hub dataset id ("" -> local folder only)
    num_classes: int | None  # expected, for a warning when a folder differs
    num_images: int | None
    hub_checked: bool  # the hub page was seen to exist with an image + class-label layout


REGISTRY: dict[str, DatasetSpec] = {
    "ucmerced": DatasetSpec("ucmerced", "blanchon/UC_Merced", 21, 2100, True),
    "aid": DatasetSpec("aid", "blanchon/AID", 30, 10000, True),
    "nwpu-resisc45": DatasetSpec(
        "nwpu-resisc45", "jonathan-roberts1/NWPU-RESISC45", 45, 31500, True
    ),
    "optimal-31": DatasetSpec("optimal-31", "jonathan-roberts1/Optimal-31", 31, 1860, True),
    "eurosat": DatasetSpec("eurosat", "blanchon/EuroSAT_RGB", 10, 27000, True),
    "imagefolder": DatasetSpec("imagefolder", "", None, None, False),
}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry, or a ValueError listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"data.dataset: unknown dataset {name!r}. Fix: use one of {sorted(REGISTRY)}"
        ) from None
