"""``promptfolio`` (PromptFolio, Pan et al., NeurIPS 2024): a global prompt (averaged by FedAvg) and
a local prompt (kept), whose class text features are mixed into one "portfolio",
``t_c = (1 - θ) g_c + θ l_c`` with θ = ``prompt.mix-theta`` (0: fully global, 1: fully local),
and trained with CE on the mixed logits only (docs/method.md §5.6).

As the authors' code (trainers/PromptFolio.py): both prompts train through the mixed logits in one
backward pass, the mix is the plain weighted sum of the two normalised feature sets (no
renormalisation), the server averages the global prompt alone and the global model is the global
prompt's features. The theory picks θ by the data heterogeneity; the code and this module fix it
per run (their example runs use 0.4).
"""

from task.methods.base import Method

PROMPTFOLIO = Method(
    "promptfolio",
    has_private=True,
    head="clip",
    fusion="separate",
    global_ce=False,
    personal_head="mix",
    mix_renorm=False,
    description="global + local prompts, text features mixed (1 - θ) g + θ l (PromptFolio)",
)
