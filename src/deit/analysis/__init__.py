"""What a trained DeiT attends to, and how its two tokens relate: ``deit analyze``.

- Attention maps of the class token and, for a distilled model, of the distillation token: the
  last layer's attention (mean over heads) and the attention rollout over all layers (Abnar &
  Zuidema 2020, "Quantifying Attention Flow in Transformers": per layer, average the heads, add
  the identity for the residual connection, renormalise the rows, multiply through the layers).
- Cosine similarity between the class and distillation tokens: the learned tokens (depth 0)
  and every block's output (paper section 4, "Distillation token": 0.06 between the learned
  tokens, 0.93 after the last block); and between the weights of their two heads.
- How often the two heads agree on the images, and with a teacher when one is given.

Figures (:mod:`.figures`) are saved as PNG; the numbers go to ``summary.json``. Shapes: see
:mod:`.attention`.
"""

from .attention import TOKEN_NAMES, attention_maps, attention_rollout, collect_attention
from .figures import attention_figure, similarity_figure
from .run import analyze, format_summary
from .similarity import (
    PAPER_TOKEN_SIMILARITY,
    head_agreement,
    head_weight_similarity,
    learned_token_similarity,
    token_report,
    token_similarity,
)

__all__ = [
    "PAPER_TOKEN_SIMILARITY",
    "TOKEN_NAMES",
    "collect_attention",
    "attention_rollout",
    "attention_maps",
    "token_similarity",
    "learned_token_similarity",
    "token_report",
    "head_weight_similarity",
    "head_agreement",
    "attention_figure",
    "similarity_figure",
    "analyze",
    "format_summary",
]
