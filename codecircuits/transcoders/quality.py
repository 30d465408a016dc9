"""How good a transcoder set is, on held-out code, per layer:

- ``fvu``: the fraction of variance of the MLP's output left unexplained, ``Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` over all
  tokens (ȳ the mean output over the tokens);
- ``l0``: active features per token;
- ``dead``: the share of features never active in the ``n_tokens`` evaluated; ``dense``: the share active on more
  than ``dense_threshold`` (10%) of them;
- ``delta_loss``: the increase of the model's next-token loss (nats per token) when this layer's transcoder
  replaces its MLP (a hook on ``mlp.hook_out`` returns the transcoder's output of the input that
  ``mlp.hook_in`` saw in the same pass), and ``delta_loss_all`` when every layer of the set is replaced at once.

BOS positions keep the true MLP output (the transcoders are not trained there, and circuit-tracer zeroes
features at position 0); padding and BOS are left out of every statistic. The statistics read ``tokens`` tokens;
the spliced losses, which cost one forward pass per layer and batch, read the first ``loss_tokens`` of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import figures
from ..core.batching import progress_bar
from ..errors import CheckpointError, InputError
from .data import token_stream
from .model import TranscoderSet

QUALITY_JSON = "quality.json"
COLUMNS = ["layer", "fvu", "l0", "dead", "dense", "delta_loss"]


@dataclass
class TranscoderQuality:
    """Per-layer quality of a transcoder set (module docstring); ``rows`` hold one dict per layer."""

    rows: list[dict]
    loss: float | None  # the model's own next-token loss on the loss tokens (nats)
    delta_loss_all: float | None  # loss increase with every layer of the set replaced together
    n_tokens: int  # tokens the statistics read
    loss_tokens: int  # tokens the losses read
    corpora: list[str] = field(default_factory=list)
    dense_threshold: float = 0.1
    meta: dict = field(default_factory=dict)

    def to_dataframe(self):
        """One row per layer: fvu, l0, dead, dense, delta_loss."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=COLUMNS)

    def top(self, k: int = 10, by: str = "delta_loss"):
        """The ``k`` worst layers by ``by`` (the loss increase by default), largest first."""
        df = self.to_dataframe()
        if by not in df.columns:
            raise InputError(f"no column {by!r}; the table has {', '.join(df.columns)}")
        return df.sort_values(by, ascending=False, kind="stable", na_position="last").head(k)

    def plot(self) -> figures.Figure:
        """FVU and the next-token loss increase of each layer's transcoder, by layer."""
        if not self.rows:
            raise InputError("This quality report has no layers: nothing to plot.")
        df = self.to_dataframe()
        series = {"FVU": df["fvu"].tolist()}
        if df["delta_loss"].notna().any():
            series["Δ loss (nats), this layer replaced"] = df["delta_loss"].tolist()
        title = "transcoder quality by layer"
        if self.delta_loss_all is not None:
            title += f" (all layers replaced: Δ loss {self.delta_loss_all:.3f} nats)"
        return figures.lines([int(v) for v in df["layer"]], series, title=title, x_title="layer", y_title="value")

    def table(self) -> str:
        """The quality table in Markdown (as ``docs/transcoders.md`` shows it)."""
        lines = ["| layer | FVU | L0 | dead | dense | Δ loss (nats) |", "|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            dl = "—" if r["delta_loss"] is None or (isinstance(r["delta_loss"], float) and math.isnan(r["delta_loss"])) else f"{r['delta_loss']:.3f}"
            lines.append(f"| {r['layer']} | {r['fvu']:.3f} | {r['l0']:.1f} | {r['dead']:.1%} | {r['dense']:.1%} | {dl} |")
        tail = f"all layers replaced together: Δ loss {self.delta_loss_all:.3f} nats" if self.delta_loss_all is not None else ""
        base = f"; the model's own loss {self.loss:.3f} nats" if self.loss is not None else ""
        return "\n".join(lines) + f"\n\n{self.n_tokens:,} held-out tokens ({', '.join(self.corpora)}){base}. {tail}".rstrip()

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON (to ``path``, or ``path/quality.json`` when ``path`` is a folder)."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / QUALITY_JSON
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TranscoderQuality:
        """Read a report written by :meth:`save` (a JSON file, or a set's folder holding ``quality.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / QUALITY_JSON
        if not path.exists():
            raise CheckpointError(f"no quality report at {path}: run `codecircuits transcoders quality DIR` to make one")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def _next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token loss over positions whose next token is a real document token, and their count."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    valid = mask[:, 1:]
    return float(nll[valid].double().sum()), int(valid.sum())


def _splice_hooks(tset: TranscoderSet, layers, keep: torch.Tensor):
    """Hooks that replace the MLP output of ``layers`` by their transcoders' output (``keep``: positions that keep
    the true output, e.g. BOS)."""
    seen: dict[int, torch.Tensor] = {}
    hooks = []
    for layer in layers:
        def save_in(value, hook, layer=layer):
            seen[layer] = value
            return value

        def replace_out(value, hook, layer=layer):
            tc = tset[layer]
            new = tc(seen[layer].to(tc.W_enc.dtype)).to(value.dtype)
            return torch.where(keep[..., None].to(value.device), value, new)

        hooks += [(tset.input_hook_of(layer), save_in), (tset.output_hook_of(layer), replace_out)]
    return hooks


class _Stats:
    """Running sums of one layer's reconstruction and feature statistics (float64)."""

    def __init__(self, n_features: int, d_out: int):
        self.sse = self.sum_sq = 0.0
        self.sum_y = torch.zeros(d_out, dtype=torch.float64)
        self.n = 0
        self.active = 0.0
        self.fired = torch.zeros(n_features, dtype=torch.int64)

    def add(self, tc, x: torch.Tensor, y: torch.Tensor) -> None:
        acts = tc.encode(x)
        y_hat = tc.decode(acts, x)
        self.sse += float((y - y_hat).double().pow(2).sum())
        self.sum_sq += float(y.double().pow(2).sum())
        self.sum_y += y.double().sum(0)
        self.n += x.shape[0]
        on = acts > 0
        self.active += float(on.sum())
        self.fired += on.sum(0)

    def row(self, layer: int, dense_threshold: float) -> dict:
        var = self.sum_sq - float(self.sum_y.pow(2).sum()) / max(self.n, 1)
        rate = self.fired.double() / max(self.n, 1)
        return {
            "layer": layer,
            "fvu": self.sse / var if var > 0 else float("nan"),
            "l0": self.active / max(self.n, 1),
            "dead": float((self.fired == 0).double().mean()),
            "dense": float((rate > dense_threshold).double().mean()),
        }


def transcoder_quality(
    model,
    transcoders: TranscoderSet,
    *,
    corpora=None,
    texts=None,
    tokens: int = 32_768,
    loss_tokens: int | None = 4_096,
    window: int = 128,
    batch_size: int = 16,
    seed: int = 0,
    dense_threshold: float = 0.1,
    progress: bool = True,
) -> TranscoderQuality:
    """The quality of ``transcoders`` on ``model`` (module docstring), on ``texts`` or ``corpora`` (default: the
    held-out test splits of :func:`codecircuits.transcoders.data.default_corpora`). ``loss_tokens=0`` skips the
    spliced losses; ``None`` measures them on all ``tokens``."""
    transcoders = transcoders.for_model(model)  # a set written for the model's own MLP input reads the bridge's
    transcoders.check_model(model)
    stream = token_stream(model, corpora, texts=texts, tokens=tokens, window=window, seed=seed, split="test")
    n_windows = len(stream)
    layers = transcoders.layers
    stats = {layer: _Stats(transcoders[layer].n_features, transcoders[layer].d_out) for layer in layers}
    names = {h for layer in layers for h in (transcoders.input_hook_of(layer), transcoders.output_hook_of(layer))}
    loss_budget = tokens if loss_tokens is None else loss_tokens
    clean = {"sum": 0.0, "n": 0}
    spliced = {layer: 0.0 for layer in layers} | {"all": 0.0}
    bar = progress_bar(n_windows, "transcoder quality", enabled=progress)
    with torch.no_grad():
        for start in range(0, n_windows, batch_size):
            toks, mask = stream.batch(start, min(batch_size, n_windows - start))
            toks, mask = toks.to(model.cfg.device), mask.to(model.cfg.device)
            logits, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
            for layer in layers:
                tc = transcoders[layer]
                x = cache[transcoders.input_hook_of(layer)][mask].to(tc.W_enc.dtype).cpu()
                y = cache[transcoders.output_hook_of(layer)][mask].to(tc.W_enc.dtype).cpu()
                stats[layer].add(tc, x, y)
            if clean["n"] < loss_budget:
                _spliced_losses(model, transcoders, toks, mask, logits, clean, spliced)
            bar.update(toks.shape[0])
    bar.close()
    rows = [stats[layer].row(layer, dense_threshold) for layer in layers]
    base = clean["sum"] / clean["n"] if clean["n"] else None
    for r in rows:
        r["delta_loss"] = spliced[r["layer"]] / clean["n"] - base if base is not None else None
    return TranscoderQuality(
        rows=rows, loss=base, delta_loss_all=spliced["all"] / clean["n"] - base if base is not None else None,
        n_tokens=stats[layers[0]].n, loss_tokens=clean["n"], corpora=list(stream.names),
        dense_threshold=dense_threshold, meta={"scan": transcoders.scan, "model": str(getattr(model.cfg, "model_name", ""))},
    )


def _spliced_losses(model, tset: TranscoderSet, toks, mask, logits, clean: dict, spliced: dict) -> None:
    """Add this batch's clean loss and its loss with each layer (and all layers) replaced by the transcoders."""
    keep = torch.zeros_like(mask)
    if getattr(model.cfg, "default_prepend_bos", False):
        keep[:, 0] = ~mask[:, 0]  # the BOS slot (a real first token is never kept)
    s, n = _next_token_loss(logits, toks, mask)
    clean["sum"] += s
    clean["n"] += n
    for layer in [*tset.layers, "all"]:
        layers = tset.layers if layer == "all" else [layer]
        out = model.run_with_hooks(toks, fwd_hooks=_splice_hooks(tset, layers, keep))
        spliced[layer] += _next_token_loss(out, toks, mask)[0]


def save_quality_table(quality: TranscoderQuality, directory: str | Path) -> Path:
    """Write ``quality.json`` and ``quality.md`` (the Markdown table) into a set's folder."""
    directory = Path(directory)
    path = quality.save(directory)
    (directory / "quality.md").write_text(quality.table() + "\n", encoding="utf-8")
    return path


__all__ = ["QUALITY_JSON", "TranscoderQuality", "save_quality_table", "transcoder_quality"]
