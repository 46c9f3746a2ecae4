"""CLIP's own text transformer, driven by token embeddings instead of token ids.

transformers 5.x ``CLIPTextModel.forward`` takes no ``inputs_embeds``, so this composes the model's
own parts: embeddings (token embeddings given, positions added), the encoder with the causal mask
the model itself builds, the final layer norm and the text projection, pooled at the end token.

Because attention is causal and the feature is read at the end token, tokens after the end token
never influence it: sequences can be cut to the longest real prompt with no change in the result
(tests/task/test_text_encoder.py proves it against the 77-token path).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPModel
from transformers.masking_utils import create_causal_mask


class PromptTextEncoder(nn.Module):
    """Maps prompt embeddings [N, L, W] and end-token positions [N] to text features [N, D]."""

    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection

    def forward(self, prompt_embeds: torch.Tensor, eos_positions: torch.Tensor) -> torch.Tensor:
        tm = self.text_model
        hidden = tm.embeddings(inputs_embeds=prompt_embeds)
        mask = create_causal_mask(
            config=tm.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None
        )
        hidden = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        last = hidden.last_hidden_state
        rows = torch.arange(last.shape[0], device=last.device)
        # LayerNorm is per token, so normalising only the pooled rows is exact and cheaper.
        pooled = tm.final_layer_norm(last[rows, eos_positions.to(last.device)])
        return self.text_projection(pooled)
