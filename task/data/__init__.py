"""FedRSCLIP data layer: datasets -> records -> federations (no Flower server/client code)."""

from task.config import DataConfig
from task.data.errors import DataError
from task.data.federation import (
    ClientData,
    Federation,
    build_federation,
    build_local_federation,
    federate,
    local_manifest_dict,
    manifest_dict,
    write_manifest,
    write_run_manifest,
)
from task.data.records import CorruptImageError, ImageRecord, load_rgb, validate_images

__all__ = [
    "ClientData",
    "CorruptImageError",
    "DataConfig",
    "DataError",
    "Federation",
    "ImageRecord",
    "build_federation",
    "build_local_federation",
    "federate",
    "local_manifest_dict",
    "load_rgb",
    "manifest_dict",
    "validate_images",
    "write_manifest",
    "write_run_manifest",
]
