"""``zeroshot``: the frozen model with hand-written remote-sensing templates; nothing trains,
nothing is sent (the templates: task.model.zeroshot)."""

from task.methods.base import Method

ZEROSHOT = Method(
    "zeroshot",
    trains=False,
    head="clip",
    description="frozen CLIP with hand-written remote-sensing templates, no training",
)
