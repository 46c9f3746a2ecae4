"""The methods: one module each, registered here (docs/architecture.md: adding a method).

Each module declares one :class:`~task.methods.base.Method` (what it trains, shares and keeps, its
heads, its loss terms and its client kind); the names a run may ask for are the choices of the
``method.name`` config key (task.config.core.METHOD_NAMES), and this registry must hold exactly
those (checked at import).
"""

from __future__ import annotations

from task.config import ConfigError
from task.config.core import METHOD_NAMES
from task.methods.base import Method
from task.methods.fedavg_full import FEDAVG_FULL
from task.methods.fedotp import FEDOTP
from task.methods.fedpgp import FEDPGP
from task.methods.fedprox import FEDPROX
from task.methods.fedrsclip import ABLATIONS, FEDRSCLIP
from task.methods.local import LOCAL
from task.methods.pfedmoap import PFEDMOAP
from task.methods.promptfl import PROMPTFL
from task.methods.promptfolio import PROMPTFOLIO
from task.methods.zeroshot import ZEROSHOT
from task.model.prompts import PRIVATE_KEY, SHARED_KEY

__all__ = [
    "METHODS",
    "PRIVATE_KEY",
    "SHARED_KEY",
    "Method",
    "get_method",
    "shared_bytes",
    "shared_numel",
]

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        ZEROSHOT,
        LOCAL,
        PROMPTFL,
        FEDPROX,
        FEDOTP,
        FEDPGP,
        PROMPTFOLIO,
        PFEDMOAP,
        FEDRSCLIP,
        *ABLATIONS,
        FEDAVG_FULL,
    )
}
if tuple(METHODS) != METHOD_NAMES:  # the config key's choices and the registry are one list
    raise RuntimeError(f"registered methods {list(METHODS)} != method.name choices {METHOD_NAMES}")


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"method.name {name!r} is unknown (unknown method); choose one of {sorted(METHODS)}"
        ) from None


def shared_numel(method: Method, learner: object) -> int:
    """Numbers the method sends to the server per round (and receives back) for this learner."""
    state = learner.state_dict()
    return sum(state[k].numel() for k in method.shared_keys_for(learner))


def shared_bytes(method: Method, learner: object, bytes_per_value: int = 4) -> int:
    """Bytes of one upload per round (fp32 by default; 2 with fp16 transport)."""
    return shared_numel(method, learner) * bytes_per_value
