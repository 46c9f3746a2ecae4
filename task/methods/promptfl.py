"""``promptfl`` (PromptFL): one shared CoOp prompt trained with CE and averaged by FedAvg."""

from task.methods.base import Method

PROMPTFL = Method("promptfl", head="clip", description="one shared CoOp prompt, CE, FedAvg")
