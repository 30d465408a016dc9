"""Value vectors and reversible edits of them: where a neuron's value vector lives in the model, one edit with
the row before and after (:class:`NeuronEdit`), ordered sets of edits that undo bit for bit (:class:`Edits`),
saving and loading them, a checkpoint with the edits in it, and snapshots of whole output weights.

Edits act on the weights the forward pass reads: in a ``TransformerBridge`` that is the wrapped Hugging Face
module ``model.blocks[l].mlp.out`` (``down_proj`` / ``dense_4h_to_h`` / ``c_proj`` / ``fc_out``), in the bridge's
processed (folded, centred) weight space.
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float

from .. import figures
from ..core.sites import Neuron
from ..errors import CheckpointError, InputError

# ----------------------------------------------------------------------------------------------------------
# where the value vectors live


def mlp_out_module(model, layer: int) -> torch.nn.Module:
    """The module whose weight holds the value vectors of ``layer`` (the Hugging Face output projection the
    bridge wraps); an error for a layer the model does not have."""
    if not 0 <= layer < model.cfg.n_layers:
        raise InputError(f"Layer {layer} is out of range: the model has layers 0..{model.cfg.n_layers - 1}.")
    out = model.blocks[layer].mlp.out
    return getattr(out, "_original_component", out)


def mlp_out_weight(model, layer: int) -> torch.Tensor:
    """The MLP output weight of ``layer`` as a ``[d_mlp, d_model]`` view (row k = value vector of neuron k).

    The view shares storage with the parameter the forward pass uses, so writing into it edits the model.
    """
    mod = mlp_out_module(model, layer)
    w = mod.weight
    d_mlp, d_model = model.cfg.d_mlp, model.cfg.d_model
    if isinstance(mod, torch.nn.Linear) and tuple(w.shape) == (d_model, d_mlp):
        return w.T
    if tuple(w.shape) == (d_mlp, d_model) and not isinstance(mod, torch.nn.Linear):  # GPT-2 style Conv1D
        return w
    raise InputError(
        f"Cannot tell how the MLP output weight of layer {layer} ({type(mod).__name__}, shape {tuple(w.shape)}) maps "
        f"to [d_mlp={d_mlp}, d_model={d_model}]; repair supports Linear and Conv1D output projections."
    )


def value_vector(model, layer: int, neuron: int) -> torch.Tensor:
    """A copy of neuron ``neuron``'s value vector ``W_out[layer][neuron]`` (``[d_model]``)."""
    _check_neuron(model, neuron)
    return mlp_out_weight(model, layer)[neuron].detach().clone()


def _check_neuron(model, neuron: int) -> None:
    if not 0 <= neuron < model.cfg.d_mlp:
        raise InputError(f"Neuron {neuron} is out of range: the MLP has neurons 0..{model.cfg.d_mlp - 1}.")


def upper_layers(model, focus: str | Sequence[int] = "half") -> list[int]:
    """Layers MINT edits: ``"half"`` (upper half, the default), ``"quarter"`` (upper quarter), ``"last3"``,
    ``"all"``, or an explicit list."""
    n = model.cfg.n_layers
    if not isinstance(focus, str):
        layers = sorted({int(layer) for layer in focus})
        if not layers or layers[0] < 0 or layers[-1] >= n:
            raise InputError(f"Layers {list(focus)} must be a non-empty subset of 0..{n - 1}.")
        return layers
    start = {"all": 0, "half": n // 2, "quarter": (3 * n) // 4, "last3": max(0, n - 3)}.get(focus)
    if start is None:
        raise InputError(f"Unknown layer focus {focus!r}; use 'half', 'quarter', 'last3', 'all' or a list of layers.")
    return list(range(start, n))


# ----------------------------------------------------------------------------------------------------------
# reversible edits


@dataclass(frozen=True)
class NeuronEdit:
    """One value-vector edit: the row of ``W_out[layer]`` before and after (both ``[d_model]``, on CPU)."""

    layer: int
    neuron: int
    old: torch.Tensor
    new: torch.Tensor

    @property
    def delta_norm(self) -> float:
        return float((self.new - self.old).norm())

    @property
    def name(self) -> str:
        return str(Neuron(self.layer, self.neuron))


def apply_edit(model, layer: int, neuron: int, new_row: Float[torch.Tensor, " d_model"]) -> NeuronEdit:
    """Set ``W_out[layer][neuron] = new_row`` and return the record that undoes it exactly."""
    _check_neuron(model, neuron)
    w = mlp_out_weight(model, layer)
    new_row = torch.as_tensor(new_row)
    if new_row.shape != (model.cfg.d_model,):
        raise InputError(f"A value vector has shape ({model.cfg.d_model},); got {tuple(new_row.shape)}.")
    old = w[neuron].detach().clone()
    with torch.no_grad():
        w[neuron] = new_row.to(device=w.device, dtype=w.dtype)
    return NeuronEdit(layer, neuron, old.cpu(), w[neuron].detach().clone().cpu())


@dataclass(frozen=True)
class Edits:
    """An ordered set of value-vector edits made to one model; undo restores every row bit for bit."""

    edits: tuple[NeuronEdit, ...] = ()
    model_name: str = ""

    def __len__(self) -> int:
        return len(self.edits)

    def __iter__(self):
        return iter(self.edits)

    def __add__(self, other: Edits) -> Edits:
        return Edits(self.edits + tuple(other.edits), self.model_name or other.model_name)

    @property
    def neurons(self) -> list[tuple[int, int]]:
        """Distinct (layer, neuron) pairs in the order they were first edited."""
        seen: dict[tuple[int, int], None] = {}
        for e in self.edits:
            seen.setdefault((e.layer, e.neuron), None)
        return list(seen)

    def undo(self, model) -> None:
        """Restore the rows as they were before the first edit (in reverse order, so repeated edits unwind)."""
        for e in reversed(self.edits):
            w = mlp_out_weight(model, e.layer)
            with torch.no_grad():
                w[e.neuron] = e.old.to(device=w.device, dtype=w.dtype)

    def apply(self, model, *, check: bool = True) -> None:
        """Re-apply the edits to a model in the state they were made from (``check`` verifies the old rows)."""
        for e in self.edits:
            w = mlp_out_weight(model, e.layer)
            if check and not torch.equal(w[e.neuron].detach().cpu(), e.old.to(w.dtype)):
                raise CheckpointError(
                    f"The value vector {e.name} of this model is not the one the edits were made from; load the "
                    f"same base model ({self.model_name or 'unknown'}) or pass check=False to apply anyway."
                )
            with torch.no_grad():
                w[e.neuron] = e.new.to(device=w.device, dtype=w.dtype)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(
            [{"step": i, "layer": e.layer, "neuron": e.neuron, "delta_norm": e.delta_norm} for i, e in enumerate(self)]
        )

    def top(self, k: int = 10):
        """The ``k`` rows of :meth:`to_dataframe` (edits) that moved their value vector most: the largest
        ``delta_norm`` (never negative) first."""
        df = self.to_dataframe()
        return df.sort_values("delta_norm", ascending=False, kind="stable").head(k) if len(df) else df

    def plot(self, k: int = 20) -> figures.Figure:
        """The ``k`` largest edits (:meth:`top`) as bars of ``|new - old|``."""
        df = self.top(k)
        if not len(df):
            raise InputError("No edits to plot.")
        df["edit"] = [f"{i}: {Neuron(a, b)}" for i, a, b in zip(df.step, df.layer, df.neuron)]
        return figures.top_bars(df, "delta_norm", label="edit", title=f"value-vector edits: top {k}")

    def save(self, path: str | Path) -> Path:
        """Write the edits (old and new rows) to a safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, e in enumerate(self.edits):
            tensors[f"{i}.old"] = e.old.contiguous()
            tensors[f"{i}.new"] = e.new.contiguous()
        meta = {
            "format": "codecircuits-edits-1",
            "model": self.model_name,
            "edits": json.dumps([[e.layer, e.neuron] for e in self.edits]),
        }
        save_file(tensors, str(path), metadata=meta)
        return path


def load_edits(path: str | Path, model=None, *, check: bool = True) -> Edits:
    """Read edits written by :meth:`Edits.save`; with ``model``, apply them to it as well."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"No edits file at {path}.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "codecircuits-edits-1":
            raise CheckpointError(f"{path} is not a codecircuits edits file (Edits.save writes them).")
        where = json.loads(meta["edits"])
        edits = tuple(
            NeuronEdit(int(layer), int(neuron), f.get_tensor(f"{i}.old"), f.get_tensor(f"{i}.new"))
            for i, (layer, neuron) in enumerate(where)
        )
    result = Edits(edits, meta.get("model", ""))
    if model is not None:
        result.apply(model, check=check)
    return result


@contextmanager
def edited(model, edits: Edits):
    """Apply ``edits`` for the duration of a ``with`` block, then undo them exactly."""
    edits.apply(model)
    try:
        yield model
    finally:
        edits.undo(model)


def _raw_param_name(model, layer: int) -> str:
    target = mlp_out_module(model, layer).weight
    for name, p in model.original_model.named_parameters():
        if p is target:
            return name.replace("._original_component", "")
    raise CheckpointError(f"Could not find the Hugging Face parameter behind the MLP output of layer {layer}.")


def save_edited_model(model, edits: Edits, out_dir: str | Path) -> Path:
    """Write a loadable checkpoint of ``model`` with ``edits`` applied, and the edits beside it.

    The bridge edits processed (folded, centred) weights, so the checkpoint is the model's source checkpoint with
    each edit's row change ``new - old`` added to the raw output-projection weights. ``load_model(out_dir)`` gives
    the edited model (bit-identical logits for RMSNorm models; for LayerNorm models the row change is centred by
    the loader, which leaves every LayerNorm reader unchanged). The edits are stored in
    ``out_dir/codecircuits_edits.safetensors`` so they can be undone after loading.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(getattr(model, "codecircuits_path", "") or "")
    if not (src / "config.json").is_file():
        raise CheckpointError(
            "save_edited_model needs the model's source checkpoint (model.codecircuits_path, set by load_model); "
            "this model has none. Save the edits alone with Edits.save and re-apply them with load_edits."
        )
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise InputError(f"Refusing to overwrite the source checkpoint {src}; choose another directory.")
    out.mkdir(parents=True, exist_ok=True)
    deltas: dict[str, dict[int, torch.Tensor]] = {}
    conv = {}
    for e in edits:
        name = _raw_param_name(model, e.layer)
        conv[name] = not isinstance(mlp_out_module(model, e.layer), torch.nn.Linear)
        rows = deltas.setdefault(name, {})
        rows[e.neuron] = rows.get(e.neuron, torch.zeros_like(e.old)) + (e.new - e.old)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    for f in sorted(glob.glob(str(src / "*.safetensors"))):
        with safe_open(f, framework="pt") as h:
            meta = h.metadata()
            tensors = {k: h.get_tensor(k) for k in h.keys()}
        for name, rows in deltas.items():
            if name not in tensors:
                continue
            t = tensors[name]
            for k, d in rows.items():
                if conv[name]:
                    t[k] += d.to(t.dtype)
                else:
                    t[:, k] += d.to(t.dtype)
        save_file(tensors, str(out / Path(f).name), metadata=meta)
    edits.save(out / "codecircuits_edits.safetensors")
    return out


class WeightSnapshot:
    """Copies of the MLP output weights of some layers, to restore them exactly after a baseline."""

    def __init__(self, model, layers: Sequence[int]):
        self.model = model
        self.saved = {layer: mlp_out_weight(model, layer).detach().clone() for layer in layers}

    def changed_rows(self) -> int:
        """Value vectors (rows of ``W_out``) that differ from the snapshot."""
        n = 0
        for layer, w0 in self.saved.items():
            n += int((mlp_out_weight(self.model, layer).detach() != w0).any(dim=1).sum())
        return n

    def restore(self) -> None:
        """Put every saved weight back as it was."""
        for layer, w0 in self.saved.items():
            with torch.no_grad():
                mlp_out_weight(self.model, layer).copy_(w0)


def logits_digest(t: torch.Tensor) -> str:
    """A fingerprint of a tensor's exact bits: logits before an edit and after undoing it have the same one only
    when the undo restored the model bit for bit."""
    return hashlib.sha1(t.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


__all__ = [
    "Edits",
    "NeuronEdit",
    "WeightSnapshot",
    "apply_edit",
    "edited",
    "load_edits",
    "logits_digest",
    "mlp_out_module",
    "mlp_out_weight",
    "save_edited_model",
    "upper_layers",
    "value_vector",
]
