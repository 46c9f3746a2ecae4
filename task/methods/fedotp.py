"""``fedotp`` (FedOTP-style, CVPR 2024): a global (averaged) and a local (kept) prompt per class,
fused by OT between image patches and the two prompts' features; CE only (docs/method.md §5).
``loss.ot-marginal-reg`` > 0 gives FedOTP's unbalanced transport."""

from task.methods.base import Method

FEDOTP = Method(
    "fedotp",
    has_private=True,
    head="ot",
    global_ce=False,
    fusion="separate",
    description="global + local prompts fused by OT over patches (FedOTP-style), CE only",
)
