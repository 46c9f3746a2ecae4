"""``local``: CoOp on each client alone; its prompt is private and never leaves the node."""

from task.methods.base import Method

LOCAL = Method(
    "local",
    has_shared=False,
    has_private=True,
    head="clip",
    description="CoOp prompt per client, never communicated",
)
