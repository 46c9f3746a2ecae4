"""Registry of methods: what each trains, which tensors it shares, which losses it uses.

A method's ``shared_keys`` are the only state-dict keys that may ever be sent to the server;
``private_keys`` stay on the client's disk. The server validates replies against these sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from task.config import LossConfig
from task.prompt_learner import PRIVATE_KEY, SHARED_KEY


@dataclass(frozen=True)
class Method:
    """Static description of a federated prompt-learning method."""

    name: str
    trains: bool = True
    has_shared: bool = True
    has_private: bool = False
    dual_prompt_alignment: bool = False  # alpha-weighted loss (needs both prompts)
    ot_alignment: bool = False  # beta-weighted cross-modal OT loss
    head: str | None = None  # fixed head; None -> loss.head from config
    description: str = ""

    @property
    def shared_keys(self) -> tuple[str, ...]:
        return (SHARED_KEY,) if self.has_shared and self.trains else ()

    @property
    def private_keys(self) -> tuple[str, ...]:
        return (PRIVATE_KEY,) if self.has_private and self.trains else ()

    def head_for(self, loss: LossConfig) -> str:
        return self.head or loss.head

    def needs_patches(self, loss: LossConfig) -> bool:
        """Patch features are extracted and cached only when a term uses them."""
        return self.trains and (
            "ot" in self.head_for(loss) or (self.ot_alignment and loss.beta > 0)
        )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "zeroshot",
            trains=False,
            head="clip",
            description="frozen CLIP with hand-written remote-sensing templates, no training",
        ),
        Method("promptfl", head="clip", description="one shared CoOp prompt, CE, FedAvg"),
        Method(
            "fedrsclip",
            has_private=True,
            dual_prompt_alignment=True,
            ot_alignment=True,
            description="shared + private prompts, dual prompt alignment, cross-modal OT",
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None
