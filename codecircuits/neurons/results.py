"""The result every attribution returns: :class:`Attribution`, the scores of model components (FFN neurons, heads,
attention neurons) for one target token per prompt, with the tables of its top components and its long format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from .. import figures
from ..core.merging import PER_PROMPT, concat_per_prompt
from ..core.sites import Head, Neuron
from ..errors import InputError


@dataclass(frozen=True)
class Attribution:
    """Scores of model components for one target token per prompt.

    ``scores[name]`` is a tensor with axes ``axes`` (first axis ``prompt``); every score is "higher = more
    important". ``coefficients`` holds the activation behind each component where that makes sense (FFN
    neuron activations ``m``, attention-neuron coefficients ``pattern * v``), ``base_logprob[prompt, layer]`` the
    log-probability of the target from the base vector alone, ``target`` the token ids scored.
    """

    scores: dict[str, torch.Tensor] = field(metadata=PER_PROMPT)
    axes: tuple[str, ...]
    target: torch.Tensor = field(metadata=PER_PROMPT)
    base_logprob: torch.Tensor = field(metadata=PER_PROMPT)
    coefficients: torch.Tensor | None = field(default=None, metadata=PER_PROMPT)
    kind: str = "ffn"
    exact_authors_lens: bool = False
    pos: int = -1
    target_tokens: tuple[str, ...] = field(default=(), metadata=PER_PROMPT)
    kv_groups: tuple[tuple[int, ...], ...] | None = None
    settings: dict = field(default_factory=dict)

    def __getitem__(self, score: str) -> torch.Tensor:
        if score not in self.scores:
            raise InputError(f"No score {score!r} in this result; it has {', '.join(self.scores)}.")
        return self.scores[score]

    @property
    def n_prompts(self) -> int:
        return int(self.target.shape[0])

    @classmethod
    def merge(cls, parts: Sequence[Attribution]) -> Attribution:
        """Attributions of consecutive shards of the prompts (first axis ``prompt``), as one, in prompt order."""
        parts = list(parts)
        if parts and parts[0].axes[0] != "prompt":
            raise InputError(f"Cannot merge attributions with axes {parts[0].axes} by prompt.")
        return concat_per_prompt(parts)

    def mean(self, score: str = "logprob_increase") -> torch.Tensor:
        """The score averaged over prompts (axes ``self.axes[1:]``)."""
        return self[score].mean(0)

    def top_indices(self, k: int = 10, score: str = "logprob_increase") -> torch.Tensor:
        """Per prompt, the flat indices (over ``axes[1:]``) of the ``k`` highest-scoring components: ``[prompt, k]``."""
        flat = self[score].reshape(self.n_prompts, -1)
        if k > flat.shape[1]:
            raise InputError(f"k={k} but there are only {flat.shape[1]} components to choose from.")
        return flat.topk(k, dim=1).indices

    def top(self, k: int = 10, score: str = "logprob_increase", prompt: int | None = None) -> pd.DataFrame:
        """The ``k`` components with the largest signed ``score`` (every score is "higher = more important"), largest
        first: by their mean over prompts (``prompt=None``) or for one prompt, one row per component
        (:meth:`to_dataframe` has one per prompt and component), with every score and the coefficient."""
        values = self[score].mean(0) if prompt is None else self[score][prompt]
        k = min(k, values.numel())
        order = torch.sort(values.flatten(), descending=True, stable=True).indices[:k]
        idx = torch.stack(torch.unravel_index(order, values.shape), dim=1)
        rows = []
        for rank, (vals, flat) in enumerate(zip(idx.tolist(), order.tolist())):
            vals = self._model_layers(vals)
            row = {"rank": rank + 1, **dict(zip(self.axes[1:], vals))}
            row["name"] = _label(self.axes[1:], vals)
            for name, t in self.scores.items():
                t = t.mean(0) if prompt is None else t[prompt]
                row[name] = float(t.flatten()[flat])
            if self.coefficients is not None:
                c = self.coefficients.mean(0) if prompt is None else self.coefficients[prompt]
                row["coefficient_m"] = float(c.flatten()[flat])
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, k: int = 20, score: str = "logprob_increase", prompt: int | None = None) -> figures.Figure:
        """Heads (axes ``layer, head``): a layer × head heatmap of the mean ``score`` (or ``prompt``'s); other
        components: the top ``k`` (:meth:`top`) as bars."""
        if tuple(self.axes[1:]) == ("layer", "head"):
            values = self[score].mean(0) if prompt is None else self[score][prompt]
            layers = self.settings.get("layers") or range(values.shape[0])
            return figures.heatmap(values.float(), title=f"{self.kind} attribution: {score}", y_title="layer",
                                   x_title="head", y_labels=list(layers), center=0.0, value_label=score)
        return figures.top_bars(self.top(k, score, prompt), score, label="name",
                                title=f"{self.kind} attribution: top {k} by {score}")

    def _model_layers(self, vals: list[int]) -> list[int]:
        """Map the ``layer`` index of ``axes[1:]`` to the model's layer number when only some layers were scored."""
        layers = self.settings.get("layers")
        if layers is not None and "layer" in self.axes[1:]:
            i = self.axes[1:].index("layer")
            vals = list(vals)
            vals[i] = int(layers[vals[i]])
        return vals

    def to_dataframe(self, scores: Sequence[str] | None = None) -> pd.DataFrame:
        """Long format: one row per (prompt, component) with one column per score (``layer`` = model layer)."""
        names = list(scores or self.scores)
        shape = self[names[0]].shape
        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
        df = pd.DataFrame(grid.numpy(), columns=list(self.axes))
        if self.settings.get("layers") is not None and "layer" in df:
            df["layer"] = [int(self.settings["layers"][i]) for i in df["layer"]]
        for n in names:
            df[n] = self[n].reshape(-1).float().numpy()
        if self.coefficients is not None and self.coefficients.shape == shape:
            df["coefficient_m"] = self.coefficients.reshape(-1).float().numpy()
        return df


def _label(axes: tuple[str, ...], vals: list[int]) -> str:
    """The one label of a component: ``L3N7`` for a neuron, ``L3H7`` for a head, else its indices joined."""
    if tuple(axes) == ("layer", "neuron"):
        return str(Neuron(*vals))
    if tuple(axes) == ("layer", "head"):
        return str(Head(*vals))
    return "_".join(str(v) for v in vals)
