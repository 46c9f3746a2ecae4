"""Which client runs a method: ``method.client_kind`` names one of the kinds below (prompts over
cached features, full fine-tuning on images, or pFedMoAP's mixture of experts)."""

from __future__ import annotations

from task.config import RunConfig
from task.local.client import FederatedClient, FullFinetuneClient, PromptClient
from task.local.moe_client import MoAPClient
from task.local.private_store import PrivateStore
from task.methods import Method, get_method

CLIENT_KINDS: dict[str, type[FederatedClient]] = {
    "prompt": PromptClient,
    "full": FullFinetuneClient,
    "moe": MoAPClient,
}


def client_kind(method: Method) -> type[FederatedClient]:
    return CLIENT_KINDS[method.client_kind]


def make_client(
    cfg: RunConfig,
    partition_id: int,
    store: PrivateStore,
    progress: bool = False,
    on_corrupt: str = "error",
    data_root: str = "",
) -> FederatedClient:
    """The client kind the method needs."""
    kind = client_kind(get_method(cfg.method.name))
    return kind(cfg, partition_id, store, progress, on_corrupt, data_root)
