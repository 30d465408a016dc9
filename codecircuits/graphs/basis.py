"""The node bases of an attribution graph: what stands in for each MLP in the local replacement model.

Each layer's MLP output, at the prompt, is written as

    mlp_out[l, p] = Σ_f a[l, p, f] · dec_l[f] + bias_l + skip_l(x[l, p]) + error[l, p]

with ``x[l, p]`` the MLP's input (``blocks.{l}.mlp.hook_in``). A node's *input* is the linear function of ``x`` that
drives it, ``enc_l[f] · x[l, p]`` (biases excluded), and its *gain* is ``∂a / ∂input`` at the prompt (used only to
predict the effect of interventions through later nodes).

- :class:`TranscoderBasis`: ``a`` are a transcoder's feature activations, ``dec`` its decoder rows, ``enc`` its
  encoder columns, ``bias = b_dec``, ``skip`` its skip path (linear in ``x``, so gradients flow through it), and the
  error is what the transcoder misses. The gain is 1 where a feature is active (ReLU, JumpReLU above its threshold,
  TopK among the k), 0 elsewhere.
- :class:`NeuronBasis`: the MLP itself, exactly (error 0). ``a`` is ``mlp.hook_post``, ``dec = W_out[l]``,
  ``bias = b_out``.

  - Plain MLPs (``act(x W_in + b_in)``): ``enc = W_in[:, n]`` (the input is the pre-activation without its bias);
    the gain is ``act'`` at the prompt's pre-activation.
  - Gated MLPs (``a = act(g) · u`` with ``g = x W_gate``, ``u = x W_in + b_in``; Llama, Qwen2, Gemma): a neuron
    has two linear inputs, and freezing either one (the gate, say) drops the first-order effect of the other,
    which on our models is as large. So the neuron's input is its *tangent* at the prompt, a linear function of
    ``x`` that differs per position: ``enc[p, n] = act(g₀) W_in[:, n] + act'(g₀) u₀ W_gate[:, n]`` (gain 1), so
    ``Δa = enc · Δx`` to first order through both paths. What is frozen is what every basis freezes (attention
    patterns and norm scales) plus the curvature of ``act(g) · u`` at the prompt's ``g₀, u₀``. The node's input
    ``enc · x`` is the linear part of its activation, not the activation; edges still sum to it exactly, and the
    graph reproduces the prompt's logits exactly (the decoder side, ``a · W_out``, is the MLP's own).

Layers a transcoder set does not cover keep their MLP whole, as an error node.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..transcoders import TranscoderSet

#: derivatives of the activation functions TransformerLens names (``cfg.act_fn``), for the neuron basis's gains
_DERIVATIVES = {
    "relu": lambda x: (x > 0).to(x.dtype),
    "silu": lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))),
    "gelu": lambda x: 0.5 * (1 + torch.erf(x / 2**0.5)) + x * torch.exp(-0.5 * x**2) / (2 * torch.pi) ** 0.5,
}


def _gelu_tanh_derivative(x: torch.Tensor) -> torch.Tensor:
    c = (2 / torch.pi) ** 0.5
    inner = c * (x + 0.044715 * x**3)
    t = torch.tanh(inner)
    return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)


for _name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
    _DERIVATIVES[_name] = _gelu_tanh_derivative


def work_dtype(model) -> torch.dtype:
    """The dtype graphs are computed in: float64 for a float64 model (exact checks), float32 otherwise (bf16 and
    fp16 models included: sums of many edges need float32)."""
    return torch.float64 if getattr(model.cfg, "dtype", None) == torch.float64 else torch.float32


def activation_derivative(act_fn: str, x: torch.Tensor) -> torch.Tensor:
    """``act'(x)`` for a TransformerLens ``act_fn`` name; a clear error for one the neuron basis does not know."""
    try:
        return _DERIVATIVES[act_fn](x)
    except KeyError:
        raise InputError(
            f"the neuron basis does not know the derivative of activation {act_fn!r} (known: {sorted(_DERIVATIVES)}); "
            "use a transcoder basis, or add it to codecircuits.graphs.basis"
        ) from None


class Basis:
    """What an attribution graph's feature nodes are. Subclasses give, per layer, the decoder and encoder rows, the
    output bias, the skip path, and the activations and gains at a prompt (from the clean run's cache)."""

    name = "basis"
    feature_type = "feature"  # circuit-tracer's node type name in the graph JSON
    scan = ""

    def layers(self, model) -> list[int]:
        return list(range(model.cfg.n_layers))

    def hooks(self, layer: int) -> list[str]:
        """Hook names the clean run must cache for :meth:`activations` (besides ``mlp.hook_in``/``hook_out``)."""
        return []

    def decoder(self, model, layer: int) -> torch.Tensor:  # [n, d_model]
        raise NotImplementedError

    def encoder(self, model, layer: int) -> torch.Tensor:  # [n, d_model], the input directions
        raise NotImplementedError

    def encoders(self, model, layer: int, cache, pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The input directions of the nodes ``(pos[i], idx[i])`` of a layer at the prompt (``[m, d_model]``): the
        encoder rows, unless the basis linearises per position (gated neurons)."""
        return self.encoder(model, layer)[idx]

    def out_bias(self, model, layer: int) -> torch.Tensor:  # [d_model]
        raise NotImplementedError

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def activations(self, model, layer: int, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, gain)``, each ``[pos, n]``, for the prompt of the (batch-1) cache."""
        raise NotImplementedError

    def check(self, model) -> None:
        """A clear error when the basis does not fit the model."""

    def describe(self) -> dict:
        return {"basis": self.name, "scan": self.scan}


class TranscoderBasis(Basis):
    """Feature nodes from a :class:`~codecircuits.transcoders.TranscoderSet` (per-layer transcoders)."""

    name = "transcoders"
    feature_type = "cross layer transcoder"  # the type circuit-tracer's viewer and Neuronpedia use for every feature

    def __init__(self, transcoders: TranscoderSet):
        if not isinstance(transcoders, TranscoderSet):
            raise InputError("TranscoderBasis needs a TranscoderSet: load one with codecircuits.transcoders.load_transcoders")
        if transcoders.input_hook != "mlp.hook_in" or transcoders.output_hook != "mlp.hook_out":
            raise InputError(
                f"attribution graphs need transcoders that read the MLP's input and write its output; this set reads "
                f"{transcoders.input_hook!r} and writes {transcoders.output_hook!r}"
            )
        self.transcoders = transcoders
        self.scan = transcoders.scan

    def layers(self, model) -> list[int]:
        return self.transcoders.layers

    def check(self, model) -> None:
        """Fits the model (:meth:`TranscoderSet.check_model`), and reads the bridge's MLP input: a set trained on
        the model's own activations gets its norm weights folded in (:meth:`TranscoderSet.for_model`)."""
        self.transcoders.check_model(model)
        self.transcoders = self.transcoders.for_model(model)

    def decoder(self, model, layer):
        return self.transcoders[layer].W_dec.detach()

    def encoder(self, model, layer):
        return self.transcoders[layer].W_enc.detach().T

    def out_bias(self, model, layer):
        return self.transcoders[layer].b_dec.detach()

    def skip(self, layer, x):
        tc = self.transcoders[layer]
        return None if tc.W_skip is None else x @ tc.W_skip.detach().to(x.dtype).T

    def activations(self, model, layer, cache):
        tc = self.transcoders[layer]
        x = cache[f"blocks.{layer}.mlp.hook_in"][0].to(tc.W_enc.dtype)
        with torch.no_grad():
            a = tc.encode(x)
        return a, (a != 0).to(a.dtype)

    def describe(self) -> dict:
        first = next(iter(self.transcoders.transcoders.values()))
        return {"basis": self.name, "scan": self.scan, "n_features": first.n_features, "activation": first.activation}


class NeuronBasis(Basis):
    """The MLP's own neurons as nodes (no training, error 0). See the module docstring for gated MLPs."""

    name = "neurons"
    feature_type = "cross layer transcoder"  # the viewer's feature type; ``metadata.basis`` says they are neurons
    scan = "neurons"

    def hooks(self, layer):
        return [f"blocks.{layer}.mlp.hook_pre", f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.mlp.hook_pre_linear"]

    @staticmethod
    def gated(model) -> bool:
        return bool(getattr(model.cfg, "gated_mlp", False))

    def check(self, model) -> None:
        if getattr(model.cfg, "act_fn", None) not in _DERIVATIVES:
            activation_derivative(str(getattr(model.cfg, "act_fn", None)), torch.zeros(1))

    def decoder(self, model, layer):
        return model.W_out[layer].detach()

    def encoder(self, model, layer):
        return model.W_in[layer].detach().T

    def out_bias(self, model, layer):
        b = getattr(model.blocks[layer].mlp, "b_out", None)
        return torch.zeros(model.cfg.d_model) if b is None else b.detach()

    def activations(self, model, layer, cache):
        a = cache[f"blocks.{layer}.mlp.hook_post"][0]
        if self.gated(model):  # the input is the tangent itself (see encoders): the gain is 1
            return a.detach(), torch.ones_like(a)
        pre = cache[f"blocks.{layer}.mlp.hook_pre"][0]
        return a.detach(), activation_derivative(model.cfg.act_fn, pre).detach()

    def encoders(self, model, layer, cache, pos, idx):
        if not self.gated(model):
            return self.encoder(model, layer)[idx]
        gate = cache[f"blocks.{layer}.mlp.hook_pre"][0][pos, idx]  # x · W_gate
        up = cache[f"blocks.{layer}.mlp.hook_pre_linear"][0][pos, idx]  # x · W_in + b_in
        act_fn = model.cfg.act_fn
        W_in, W_gate = model.W_in[layer].detach()[:, idx].T, model.W_gate[layer].detach()[:, idx].T
        return act_fn_value(act_fn, gate)[:, None] * W_in + (activation_derivative(act_fn, gate) * up)[:, None] * W_gate


def act_fn_value(act_fn: str, x: torch.Tensor) -> torch.Tensor:
    """``act(x)`` for a TransformerLens ``act_fn`` name (the frozen gate of a gated neuron)."""
    import torch.nn.functional as F

    if act_fn == "silu":
        return F.silu(x)
    if act_fn == "relu":
        return F.relu(x)
    if act_fn == "gelu":
        return F.gelu(x)
    if act_fn in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return F.gelu(x, approximate="tanh")
    activation_derivative(act_fn, x)  # raises the clear error
    raise AssertionError


def as_basis(basis) -> Basis:
    """``"neurons"``, a :class:`Basis`, a :class:`~codecircuits.transcoders.TranscoderSet`, or a path to a set."""
    if isinstance(basis, Basis):
        return basis
    if isinstance(basis, TranscoderSet):
        return TranscoderBasis(basis)
    if basis in ("neurons", "neuron", "mlp"):
        return NeuronBasis()
    if isinstance(basis, str) or hasattr(basis, "__fspath__"):
        from ..transcoders import load_transcoders

        return TranscoderBasis(load_transcoders(basis))
    raise InputError(
        f"basis must be 'neurons', a TranscoderSet, or the path of a transcoder set; got {type(basis).__name__}"
    )
