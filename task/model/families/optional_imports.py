"""Import ``timm`` and ``open_clip`` where torchvision cannot be imported.

Both packages import torchvision at module level, but the model code we use from them needs only
one class of it (``torchvision.ops.misc.FrozenBatchNorm2d``, used by timm's norm layers); the rest
is data transforms and detection ops that a frozen feature extractor never calls. On machines
where torchvision is missing or broken (e.g. the PyPI torchvision, built against CUDA torch,
beside a CPU-only torch build), the import is retried once with a minimal in-memory stand-in for
torchvision that provides that class and fails loudly if anything else is *used*. Where a real
torchvision imports, it is used and nothing here changes.

The stand-in is visible only while the package is being imported; afterwards ``torchvision`` is
removed from ``sys.modules`` again, so libraries that probe for torchvision (transformers' image
processors) still see it as absent.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

INSTALL_HINTS = {
    "timm": "pip install --no-deps 'timm>=1.0.20' (beside a CPU-only torch; plain "
    "`pip install timm` where torchvision is installable)",
    "open_clip": "pip install --no-deps open_clip_torch ftfy (beside a CPU-only torch; plain "
    "`pip install open_clip_torch` where torchvision is installable)",
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (torchvision's semantics)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class _Unavailable:
    """A name torchvision would export: importable, but any use says why it fails."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise ImportError(f"{self._name} needs torchvision, which cannot be imported here")

    def __getattr__(self, item: str) -> _Unavailable:
        return _Unavailable(f"{self._name}.{item}")

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (object,)


class _StandInModule(types.ModuleType):
    def __getattr__(self, item: str) -> _Unavailable:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self.__name__}.{item}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: object, target: object = None):  # noqa: ANN201
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []
        if spec.name == "torchvision.ops.misc":
            module.FrozenBatchNorm2d = FrozenBatchNorm2d
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


@contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    finder = _StandInFinder()
    _forget("torchvision")
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        _forget("torchvision")


def _forget(package: str) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def import_optional(package: str, needed_for: str) -> types.ModuleType:
    """``import package``; retried with the torchvision stand-in if torchvision breaks it.

    Raises ImportError with an install hint when the package itself is not installed.
    """
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as err:
        if err.name != "torchvision" and not (err.name or "").startswith("torchvision."):
            raise ImportError(
                f"{needed_for} needs the '{package}' package: {INSTALL_HINTS.get(package, '')}"
            ) from err
    except (ImportError, RuntimeError, OSError):
        pass  # torchvision present but broken (e.g. its C++ ops do not load)
    _forget(package)
    with _torchvision_stand_in():
        return importlib.import_module(package)


def has_timm_tower(config: object) -> bool:
    """Whether a transformers config builds a ``TimmWrapperModel`` tower (only then is timm
    needed: a CLIPModel or SigLIP loads where timm is not installed)."""
    vision = getattr(config, "vision_config", None)
    return getattr(config, "model_type", None) == "timm_wrapper" or (
        getattr(vision, "model_type", None) == "timm_wrapper"
    )


@contextmanager
def timm_for_transformers() -> Iterator[None]:
    """Let transformers build ``TimmWrapperModel`` towers with the timm imported above.

    transformers counts timm as available only when torchvision is too (for timm's data
    transforms, which a frozen tower never uses). Where torchvision is missing, this hands the
    imported timm to the wrapper module and answers transformers' backend check for the duration
    of the block; elsewhere it changes nothing.
    """
    from transformers.utils import import_utils

    if import_utils.is_timm_available():
        yield
        return
    timm = import_optional("timm", "a timm vision tower (TimmWrapperModel)")
    from transformers.models.timm_wrapper import modeling_timm_wrapper

    modeling_timm_wrapper.timm = timm
    mapping = import_utils.BACKENDS_MAPPING
    saved = mapping["timm"]
    mapping["timm"] = (lambda: True, saved[1])
    try:
        yield
    finally:
        mapping["timm"] = saved
