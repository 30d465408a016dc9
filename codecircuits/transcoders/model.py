"""Per-layer transcoders: a sparse, wide layer that reads an MLP's input and predicts its output.

A transcoder of layer ``l`` with ``n`` features maps the MLP's input ``x`` (``d_in``) to

    pre  = x @ W_enc + b_enc                         (n)
    a    = σ(pre)                                    ReLU, JumpReLU (pre · [pre > θ]) or TopK (the k largest, ReLU'd)
    out  = a @ W_dec + b_dec (+ x @ W_skip.T)        (d_out), the skip path optional

Shapes follow TransformerLens and SAELens (``W_enc`` is ``[d_in, n]``, ``W_dec`` is ``[n, d_out]``, ``W_skip`` is
``[d_out, d_in]``). circuit-tracer stores ``W_enc`` transposed (``[n, d_in]``); :func:`load_transcoders` and
:meth:`TranscoderSet.save` convert.

Two layouts are read, and circuit-tracer's is written:

- **circuit-tracer's transcoder set**: a folder with ``config.yaml`` (``model_kind: transcoder_set``,
  ``feature_input_hook``, ``feature_output_hook``, optional ``activation: relu | topk`` with ``k``, optional
  ``transcoders:`` list of per-layer paths) and ``layer_{i}.safetensors`` holding ``W_enc``, ``W_dec``, ``b_enc``,
  ``b_dec`` and optionally ``activation_function.threshold`` (JumpReLU), ``W_skip`` and ``k`` (TopK).
- **SAELens transcoders**: one folder per layer with ``cfg.json`` (``architecture``: ``transcoder``,
  ``skip_transcoder``, ``jumprelu_transcoder``, ``jumprelu_skip_transcoder`` or ``topk...``; ``d_in``, ``d_sae``,
  ``d_out``; ``hook_name`` and ``hook_name_out``, at the top level or under ``metadata``) and
  ``sae_weights.safetensors``; a set is a folder of such folders (or a list of them).

Hook names are TransformerLens's, relative to a block (``mlp.hook_in``) or absolute (``blocks.3.mlp.hook_in``);
:func:`canonical_hook` maps the names that mean "the MLP's input" and "the MLP's output" onto the bridge's
``blocks.{l}.mlp.hook_in`` / ``blocks.{l}.mlp.hook_out``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError

ACTIVATIONS = ("relu", "jumprelu", "topk")

#: names that mean the MLP's input / output, relative to a block, mapped to the bridge's own
_INPUT_ALIASES = ("mlp.hook_in", "hook_mlp_in", "ln2.hook_normalized", "ln2.hook_out")
_OUTPUT_ALIASES = ("mlp.hook_out", "hook_mlp_out")


def canonical_hook(name: str, layer: int | None = None) -> str:
    """The bridge's hook name for a transcoder's input or output hook: ``mlp.hook_in``, ``hook_mlp_in``,
    ``ln2.hook_normalized`` and ``ln2.hook_out`` all name what the MLP reads (``blocks.{l}.mlp.hook_in``);
    ``mlp.hook_out`` and ``hook_mlp_out`` name what it writes (``blocks.{l}.mlp.hook_out``). Other names are
    kept as they are (absolute names made relative first, so ``blocks.3.hook_mlp_out`` → ``mlp.hook_out``).
    The result is relative to a block, or absolute when ``layer`` is given."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    relative = match.group(2) if match else name
    if relative in _INPUT_ALIASES:
        relative = "mlp.hook_in"
    elif relative in _OUTPUT_ALIASES:
        relative = "mlp.hook_out"
    return relative if layer is None else f"blocks.{layer}.{relative}"


class Transcoder(nn.Module):
    """One layer's transcoder (see the module docstring for the maths and the shapes)."""

    def __init__(
        self,
        d_in: int,
        n_features: int,
        d_out: int | None = None,
        *,
        activation: str = "topk",
        k: int | None = None,
        skip: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "topk" and (k is None or not 0 < k <= n_features):
            raise InputError(f"a TopK transcoder needs 0 < k <= n_features ({n_features}), got k={k}")
        d_out = d_in if d_out is None else d_out
        kw = {"dtype": dtype, "device": device}
        self.activation, self.k = activation, k if activation == "topk" else None
        self.W_enc = nn.Parameter(torch.zeros(d_in, n_features, **kw))
        self.b_enc = nn.Parameter(torch.zeros(n_features, **kw))
        self.W_dec = nn.Parameter(torch.zeros(n_features, d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        self.threshold = nn.Parameter(torch.zeros(n_features, **kw)) if activation == "jumprelu" else None
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, **kw)) if skip else None

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def n_features(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_enc + b_enc`` over the last axis."""
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The activation function applied to pre-activations (last axis = features)."""
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold).to(pre.dtype)
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of inputs ``x`` (``[..., d_in]`` → ``[..., n_features]``)."""
        return self.activate(self.pre_acts(x))

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """The skip path ``x @ W_skip.T``, or None without one."""
        return None if self.W_skip is None else x.to(self.W_skip.dtype) @ self.W_skip.T

    def decode(self, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """``acts @ W_dec + b_dec``, plus the skip path of ``x`` when the transcoder has one."""
        out = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise InputError("this transcoder has a skip connection: decode(acts, x) needs the input x too")
            out = out + self.skip(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k else ""
        return f"d_in={self.d_in}, n_features={self.n_features}, d_out={self.d_out}, {self.activation}{k}, skip={self.W_skip is not None}"


@dataclass
class TranscoderSet:
    """Transcoders by layer, with the hooks they read and write (relative to a block, TransformerLens names).

    ``transcoders[l]`` replaces the MLP of layer ``l``; a set may cover only some layers (``layers``).
    ``scan`` names the set (circuit-tracer's and Neuronpedia's word for it)."""

    transcoders: dict[int, Transcoder]
    input_hook: str = "mlp.hook_in"
    output_hook: str = "mlp.hook_out"
    scan: str = "codecircuits"
    meta: dict = field(default_factory=dict)
    #: which MLP input the encoders read: ``"model"``, the model's own (after its norm's weight and bias: what
    #: circuit-tracer's and SAELens's sets hold), or ``"bridge"``, the bridge's ``mlp.hook_in`` in compatibility
    #: mode, where that weight and bias are folded into the MLP (what sets trained here read). See :meth:`for_model`.
    input_convention: str = "bridge"

    def __post_init__(self):
        if not self.transcoders:
            raise InputError("a transcoder set needs at least one layer's transcoder")
        self.transcoders = {int(k): v for k, v in sorted(self.transcoders.items())}
        self.input_hook, self.output_hook = canonical_hook(self.input_hook), canonical_hook(self.output_hook)

    @property
    def layers(self) -> list[int]:
        return list(self.transcoders)

    def __getitem__(self, layer: int) -> Transcoder:
        try:
            return self.transcoders[layer]
        except KeyError:
            raise InputError(f"this transcoder set covers layers {self.layers}, not layer {layer}") from None

    def __len__(self) -> int:
        return len(self.transcoders)

    def __iter__(self):
        return iter(self.transcoders.items())

    def to(self, *args, **kwargs) -> TranscoderSet:
        for tc in self.transcoders.values():
            tc.to(*args, **kwargs)
        return self

    def for_model(self, model) -> TranscoderSet:
        """This set reading the bridge's ``mlp.hook_in``: a set of ``input_convention="model"`` gets each layer's
        norm weight ``γ`` and bias ``β`` folded into its encoder (``W_enc ← diag(γ) W_enc``, ``b_enc ← b_enc + β W_enc``),
        since compatibility mode folded them out of the activations (``codecircuits.load_model`` records them before
        it does). A set already in the bridge's convention, or a model whose norms were not folded, is returned as
        is."""
        norms = getattr(model, "codecircuits_mlp_input_norm", None)
        if self.input_convention == "bridge" or not norms:
            return self
        folded = {}
        for layer, tc in self:
            gamma, beta = norms[layer]
            new = _copy(tc)
            with torch.no_grad():
                W = tc.W_enc.detach()
                if beta is not None:
                    new.b_enc.copy_(tc.b_enc + beta.to(W.dtype) @ W)
                new.W_enc.copy_(gamma.to(W.dtype)[:, None] * W)
            folded[layer] = new
        return TranscoderSet(folded, self.input_hook, self.output_hook, self.scan, dict(self.meta), "bridge")

    def to_model_convention(self, model) -> TranscoderSet:
        """The inverse of :meth:`for_model`: encoders that read the model's own MLP input (what circuit-tracer and
        SAELens expect in a file). Needs every norm weight nonzero."""
        norms = getattr(model, "codecircuits_mlp_input_norm", None)
        if self.input_convention == "model" or not norms:
            return self
        out = {}
        for layer, tc in self:
            gamma, beta = norms[layer]
            if bool((gamma == 0).any()):
                raise InputError(f"layer {layer}'s norm has zero weights: its transcoder cannot be written for the model's own input")
            new = _copy(tc)
            with torch.no_grad():
                W = tc.W_enc.detach() / gamma.to(tc.W_enc.dtype)[:, None]
                new.W_enc.copy_(W)
                if beta is not None:
                    new.b_enc.copy_(tc.b_enc - beta.to(W.dtype) @ W)
            out[layer] = new
        return TranscoderSet(out, self.input_hook, self.output_hook, self.scan, dict(self.meta), "model")

    def input_hook_of(self, layer: int) -> str:
        return f"blocks.{layer}.{self.input_hook}"

    def output_hook_of(self, layer: int) -> str:
        return f"blocks.{layer}.{self.output_hook}"

    def check_model(self, model) -> None:
        """A clear error when the set does not fit ``model`` (layers, widths, hook names)."""
        n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
        bad = [layer for layer in self.layers if not 0 <= layer < n_layers]
        if bad:
            raise InputError(f"the transcoder set has layers {bad}, but the model has {n_layers} layers")
        for layer, tc in self:
            if tc.d_in != d_model or tc.d_out != d_model:
                raise InputError(
                    f"layer {layer}'s transcoder maps {tc.d_in} → {tc.d_out}, but the model's d_model is {d_model}: "
                    "was it trained for another model?"
                )
            for hook in (self.input_hook_of(layer), self.output_hook_of(layer)):
                if hook not in model.hook_dict:
                    raise InputError(f"the transcoder set reads or writes {hook!r}, which the model has not")

    def save(self, directory: str | Path, model=None) -> Path:
        """Write the set in circuit-tracer's layout (``config.yaml`` + ``layer_{i}.safetensors``). Given the
        ``model`` the set was made for, the encoders are written for the model's own MLP input (the norm's weight
        unfolded, :meth:`to_model_convention`), so circuit-tracer reads the file as it reads its own sets; without
        it they are written as they are, and ``config.yaml`` records which input they read."""
        import yaml
        from safetensors.torch import save_file

        if model is not None:
            self = self.to_model_convention(model)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        first = next(iter(self.transcoders.values()))
        config = {
            "model_kind": "transcoder_set",
            "scan": self.scan,
            "feature_input_hook": self.input_hook,
            "feature_output_hook": self.output_hook,
            "activation": first.activation if first.activation != "jumprelu" else "relu",
            "transcoders": [f"layer_{layer}.safetensors" for layer in self.layers],
            "layers": self.layers,
        }
        if first.k is not None:
            config["k"] = first.k
        config["codecircuits"] = {**self.meta, "input_convention": self.input_convention}
        for layer, tc in self:
            tensors = {
                "W_enc": tc.W_enc.detach().T.contiguous().cpu(),
                "W_dec": tc.W_dec.detach().contiguous().cpu(),
                "b_enc": tc.b_enc.detach().cpu(),
                "b_dec": tc.b_dec.detach().cpu(),
            }
            if tc.threshold is not None:
                tensors["activation_function.threshold"] = tc.threshold.detach().cpu()
            if tc.W_skip is not None:
                tensors["W_skip"] = tc.W_skip.detach().contiguous().cpu()
            if tc.k is not None:
                tensors["k"] = torch.tensor(tc.k)
            save_file(tensors, str(directory / f"layer_{layer}.safetensors"))
        (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return directory


def _copy(tc: Transcoder) -> Transcoder:
    new = Transcoder(tc.d_in, tc.n_features, tc.d_out, activation=tc.activation, k=tc.k, skip=tc.W_skip is not None,
                     dtype=tc.W_enc.dtype)
    new.load_state_dict(tc.state_dict())
    return new


def _from_tensors(tensors: dict, *, enc_rows_are_features: bool, activation: str | None, k: int | None, dtype):
    """A :class:`Transcoder` from its weight tensors (``enc_rows_are_features``: circuit-tracer's ``W_enc``)."""
    W_enc = tensors["W_enc"].T if enc_rows_are_features else tensors["W_enc"]
    threshold = tensors.get("activation_function.threshold", tensors.get("threshold"))
    if "k" in tensors and k is None:
        k = int(tensors["k"])
    if activation is None or activation == "relu":
        activation = "jumprelu" if threshold is not None else ("topk" if k is not None else "relu")
    d_in, n = W_enc.shape
    tc = Transcoder(d_in, n, tensors["W_dec"].shape[1], activation=activation, k=k, skip="W_skip" in tensors, dtype=dtype)
    with torch.no_grad():
        tc.W_enc.copy_(W_enc)
        tc.W_dec.copy_(tensors["W_dec"])
        tc.b_enc.copy_(tensors["b_enc"])
        tc.b_dec.copy_(tensors["b_dec"])
        if tc.threshold is not None:
            tc.threshold.copy_(threshold)
        if tc.W_skip is not None:
            tc.W_skip.copy_(tensors["W_skip"])
    return tc


def _read_circuit_tracer(directory: Path, dtype) -> TranscoderSet:
    import yaml
    from safetensors.torch import load_file

    config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8")) or {}
    kind = config.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise CheckpointError(
            f"{directory}/config.yaml has model_kind {kind!r}: only per-layer sets (transcoder_set) are read; "
            "cross-layer transcoders are not supported yet"
        )
    for key in ("feature_input_hook", "feature_output_hook"):
        if key not in config:
            raise CheckpointError(f"{directory}/config.yaml has no {key!r}: circuit-tracer's layout needs both hooks")
    paths = config.get("transcoders")
    if paths:
        files = {}
        for i, p in enumerate(paths):
            match = re.search(r"layer_(\d+)", str(p))
            files[int(match.group(1)) if match else i] = directory / Path(str(p)).name
    else:
        files = {int(m.group(1)): p for p in directory.glob("layer_*.safetensors") if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))}
    if not files:
        raise CheckpointError(f"{directory} has a config.yaml but no layer_{{i}}.safetensors files")
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise CheckpointError(f"the transcoder set in {directory} lists files that are not there: {missing}")
    activation, k = config.get("activation"), config.get("k")
    transcoders = {
        layer: _from_tensors(load_file(str(path)), enc_rows_are_features=True, activation=activation, k=k, dtype=dtype)
        for layer, path in files.items()
    }
    return TranscoderSet(
        transcoders,
        input_hook=config["feature_input_hook"],
        output_hook=config["feature_output_hook"],
        scan=str(config.get("scan", directory.name)),
        meta={k: v for k, v in (config.get("codecircuits") or {}).items() if k != "input_convention"},
        input_convention=(config.get("codecircuits") or {}).get("input_convention", "model"),
    )


def _read_saelens_one(directory: Path, dtype) -> tuple[int, Transcoder, str, str]:
    from safetensors.torch import load_file

    cfg = json.loads((directory / "cfg.json").read_text(encoding="utf-8"))
    meta = cfg.get("metadata") or {}
    hook_in = cfg.get("hook_name") or meta.get("hook_name")
    hook_out = cfg.get("hook_name_out") or meta.get("hook_name_out")
    if not hook_in or not hook_out:
        raise CheckpointError(f"{directory}/cfg.json names no hook_name / hook_name_out: is it a transcoder?")
    match = re.fullmatch(r"blocks\.(\d+)\..+", hook_in)
    layer = cfg.get("hook_layer", meta.get("hook_layer"))
    layer = int(match.group(1)) if match else layer
    if layer is None:
        raise CheckpointError(f"{directory}/cfg.json: cannot tell the layer from hook_name {hook_in!r}")
    arch = str(cfg.get("architecture", "transcoder"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k"))
    activation = "jumprelu" if "jumprelu" in arch else ("topk" if "topk" in arch or k else "relu")
    weights = directory / "sae_weights.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{directory} has cfg.json but no sae_weights.safetensors")
    tc = _from_tensors(load_file(str(weights)), enc_rows_are_features=False, activation=activation, k=k, dtype=dtype)
    return int(layer), tc, canonical_hook(hook_in), canonical_hook(hook_out)


def load_transcoders(path: str | Path | list, *, dtype: torch.dtype = torch.float32) -> TranscoderSet:
    """Read a transcoder set from circuit-tracer's layout (a folder with ``config.yaml``) or SAELens's (a folder
    with ``cfg.json``, a folder of such folders, or a list of them). See the module docstring for both."""
    if isinstance(path, list | tuple):
        folders = [Path(p) for p in path]
    else:
        root = Path(path)
        if not root.exists():
            raise CheckpointError(
                f"no transcoder set at {root}: train one with `codecircuits transcoders train` or give a folder "
                "in circuit-tracer's layout (config.yaml + layer_{i}.safetensors) or SAELens's (cfg.json)"
            )
        if (root / "config.yaml").exists():
            return _read_circuit_tracer(root, dtype)
        folders = [root] if (root / "cfg.json").exists() else sorted(p for p in root.iterdir() if (p / "cfg.json").exists())
    if not folders:
        raise CheckpointError(
            f"{path} is neither circuit-tracer's layout (config.yaml) nor SAELens's (cfg.json, or folders of them)"
        )
    read = [_read_saelens_one(folder, dtype) for folder in folders]
    hooks = {(h_in, h_out) for _, _, h_in, h_out in read}
    if len(hooks) > 1:
        raise CheckpointError(f"the SAELens transcoders in {path} read or write different hooks: {sorted(hooks)}")
    (h_in, h_out), = hooks
    return TranscoderSet({layer: tc for layer, tc, _, _ in read}, input_hook=h_in, output_hook=h_out,
                         scan=Path(folders[0]).parent.name, input_convention="model")


def random_transcoders(
    model,
    n_features: int,
    *,
    layers: list[int] | None = None,
    activation: str = "relu",
    k: int | None = None,
    skip: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    density: float | None = None,
) -> TranscoderSet:
    """Untrained transcoders for ``model`` (encoder and decoder Gaussian, scaled so activations and outputs are of
    the residual stream's size; JumpReLU thresholds small and positive): for tests and for measuring speed and
    memory, never for reading features.

    ``density`` (ReLU and JumpReLU) sets each feature's ``b_enc`` so that it fires on about that share of the tokens
    of a short sample of code run through ``model`` (trained sets fire on a few percent); ``None`` leaves ``b_enc``
    small and random, so about half the features fire."""
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    inputs = _sample_mlp_inputs(model, layers) if density is not None and activation != "topk" else {}
    transcoders = {}
    for layer in layers:
        tc = Transcoder(d, n_features, d, activation=activation, k=k, skip=skip, dtype=dtype)
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n_features, generator=gen) / d**0.5)
            tc.b_enc.copy_(torch.randn(n_features, generator=gen) * 0.1)
            if layer in inputs:
                pre = inputs[layer].to(tc.W_enc.dtype) @ tc.W_enc
                tc.b_enc.copy_(-torch.quantile(pre.float(), 1 - density, dim=0).to(tc.b_enc.dtype))
            tc.W_dec.copy_(torch.randn(n_features, d, generator=gen) / n_features**0.5)
            tc.b_dec.copy_(torch.randn(d, generator=gen) * 0.01)
            if tc.threshold is not None:
                tc.threshold.copy_(torch.rand(n_features, generator=gen) * 0.1)
            if tc.W_skip is not None:
                tc.W_skip.copy_(torch.randn(d, d, generator=gen) / d)
        transcoders[layer] = tc
    return TranscoderSet(transcoders, scan=f"random-{n_features}-{activation}")


_SAMPLE = (
    "import os\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n\n"
    "for i in range(10):\n    total = total + i * 2\n    print('i is', i)\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
)


def _sample_mlp_inputs(model, layers) -> dict[int, torch.Tensor]:
    """Each layer's MLP inputs ``[tokens, d_model]`` on a short sample of Python (for :func:`random_transcoders`)."""
    names = {f"blocks.{layer}.mlp.hook_in" for layer in layers}
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(_SAMPLE), names_filter=lambda n: n in names)
    return {layer: cache[f"blocks.{layer}.mlp.hook_in"][0].detach().cpu() for layer in layers}
