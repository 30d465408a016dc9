"""Training per-layer transcoders: each reads an MLP's input (``blocks.{l}.mlp.hook_in``) and predicts its output
(``blocks.{l}.mlp.hook_out``).

Data. Every chosen layer trains from the same forward pass of each batch: one ``run_with_hooks`` per batch with hooks
on the chosen layers' two hooks, the last of which stops the pass (:func:`layer_activations`), so later layers and
the unembedding are not run. Windows are streamed from our corpora (:mod:`codecircuits.transcoders.data`);
no activation is stored on disk. BOS positions and padding are left out of the loss.

Method, and why (current practice as of 2024-25):

- **Scalar normalisation.** Per layer, inputs and outputs are scaled by one dataset-wide scalar each so that the
  mean norm is ``sqrt(d)`` (Anthropic, "Circuits Updates – April 2024"; SAELens's ``expected_average_only_in``),
  estimated on the first batch. One set of hyper-parameters (learning rate, sparsity coefficients) then serves
  every layer and model. The scalars are folded back into the weights before saving (``W_enc·s_in``,
  ``W_dec/s_out``, ``b_dec/s_out``, ``W_skip·s_in/s_out``; pre-activations, thresholds and TopK choices are
  unchanged), so the saved set reads and writes the model's own activations.
- **Initialisation.** Decoder rows are random unit directions; the encoder is initialised as the decoder's
  transpose (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; Anthropic April 2024): it starts every
  feature with a well-scaled, distinct direction and few dead features. (A transcoder's input and output spaces
  differ, so the tie is a good random start, not the near-identity it is for an SAE.) ``b_enc`` starts at zero and
  ``b_dec`` at the mean output of the first batch, so the untrained transcoder predicts the mean (FVU 1).
  ``W_skip`` starts at zero.
- **TopK (default; Gao et al. 2024).** Exactly ``k`` features per token, no sparsity penalty to tune. Decoder rows
  are held at unit norm (the gradient's component along each row is removed before the step and rows are
  renormalised after it), so a feature's activation is its contribution's size. Dead features (not active for
  ``dead_tokens`` tokens) are revived by the AuxK loss: the top ``aux_k`` dead features' pre-activations
  reconstruct the main reconstruction's error, weighted 1/32.
- **JumpReLU** (Rajamanoharan et al. 2024, "Jumping Ahead"; GemmaScope). ``a = z·H(z − θ)`` with a learned
  threshold per feature; the L0 penalty ``λ₀·Σ H(z − θ)`` and the jump are trained with straight-through estimators
  (rectangle kernel of width ``bandwidth``: the pseudo-derivatives reach θ only through tokens whose pre-activation
  is within ``bandwidth/2`` of it). Unit-norm decoder rows, as GemmaScope.
- **ReLU with L1** (Anthropic April 2024). The penalty ``λ₁·Σ a_i·‖W_dec,i‖`` folds the decoder norm into the L1,
  so no norm constraint is needed (shrinking the decoder cannot buy a smaller penalty).
- **Loss** per layer: ``‖y − ŷ‖² / d_out`` in normalised units (about the FVU times the output's variance share),
  plus the sparsity term (ReLU, JumpReLU, warmed up linearly over the first ``sparsity_warmup`` of the steps) or
  the AuxK term (TopK). Adam (β 0.9, 0.999) with the learning rate constant, then decayed linearly to zero over
  the last ``lr_decay`` of the steps (Gao et al.; Anthropic). One Adam over all layers' parameters: they are
  disjoint, so each layer trains exactly as it would alone.

Checkpoints (``checkpoint_dir``: ``state.safetensors`` with the weights, Adam's moments, the scalars, the
dead-feature counters and the torch RNG; ``state.json`` with the step, the data position, the settings, Adam's
hyper-parameters and the log; no pickle) are written every ``checkpoint_every`` steps and when a run stops
early. A run resumed from one gives the uninterrupted run's weights exactly: the data stream is a pure function of
the seed and position, and every other piece of state is in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import figures
from ..core.batching import progress_bar
from ..errors import CheckpointError, InputError
from .data import TokenStream, default_corpora, token_stream
from .model import ACTIVATIONS, Transcoder, TranscoderSet

STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"


@dataclass(frozen=True)
class TranscoderTrainingConfig:
    """The settings of a run (every one of them is part of a checkpoint's identity: a resume must match)."""

    layers: tuple[int, ...]
    n_features: int
    activation: str = "topk"
    k: int | None = 32
    skip: bool = False
    corpora: tuple[str, ...] | None = None  # None: the default training corpora (data.default_corpora)
    texts_digest: str | None = None  # sha256 of the texts trained on, when texts were given instead of corpora
    tokens: int = 1_000_000  # training tokens (document tokens; BOS not counted)
    window: int = 128
    batch_size: int = 32  # windows per forward pass
    lr: float = 5e-4
    seed: int = 0
    lr_decay: float = 0.2  # share of steps, at the end, over which the learning rate decays to 0
    sparsity_warmup: float = 0.05  # share of steps over which λ₁ / λ₀ rise from 0 (relu, jumprelu)
    l1_coefficient: float = 5.0  # relu: λ₁ (Anthropic April 2024, in units where E‖x‖ = sqrt(d))
    l0_coefficient: float = 1e-3  # jumprelu: λ₀ (per feature, in units of the output's mean square)
    jumprelu_bandwidth: float = 0.1
    jumprelu_threshold: float = 0.5  # initial threshold (normalised units: pre-activations start about N(0, 1))
    aux_k: int | None = None  # topk: dead features used by AuxK (None: d_model // 2)
    aux_coefficient: float = 1 / 32
    dead_tokens: int = 1_000_000  # a feature not active for this many tokens is dead (AuxK; quality)

    def identity(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["corpora"] = None if self.corpora is None else list(self.corpora)
        return d


@dataclass
class TranscoderTrainingResult:
    """A run's transcoder set (weights in the model's units), its settings and its log."""

    transcoders: TranscoderSet
    config: TranscoderTrainingConfig
    steps: int  # planned optimizer steps
    steps_done: int
    finished: bool  # False when stopped early (max_steps / max_minutes): resume to continue
    tokens_seen: int
    wall_seconds: float
    log: list[dict] = field(default_factory=list)  # {"step", "tokens", "layer", "loss", "fvu", "l0", "dead"}
    tokens_per_second: float | None = None  # of the steps this process ran

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "transcoders"} | {"config": self.config.identity()}

    def to_dataframe(self):
        """One row per (logged step, layer): loss, fraction of variance unexplained, L0, share of dead features."""
        import pandas as pd

        return pd.DataFrame(self.log, columns=["step", "tokens", "layer", "loss", "fvu", "l0", "dead"])

    def top(self, k: int = 10):
        """The ``k`` layers whose last logged FVU is largest, largest first."""
        df = self.to_dataframe()
        last = df[df["step"] == df["step"].max()] if len(df) else df
        return last.sort_values("fvu", ascending=False, kind="stable").head(k)

    def plot(self) -> figures.Figure:
        """The training FVU of every layer over the tokens seen."""
        df = self.to_dataframe()
        if df.empty:
            raise InputError("This run logged nothing: nothing to plot.")
        x = sorted(df["tokens"].unique())
        series = {f"layer {layer}": g.set_index("tokens").reindex(x)["fvu"].tolist() for layer, g in df.groupby("layer")}
        return figures.lines([int(v) for v in x], series, title="transcoder training: fraction of variance unexplained",
                             x_title="tokens", y_title="FVU")


# ----------------------------------------------------------------------------------------------------------------
# straight-through estimators (Rajamanoharan et al. 2024)


class JumpReLUSTE(torch.autograd.Function):
    """``z·H(z − θ)``; the gradient reaches θ through a rectangle kernel of width ``bandwidth``."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - threshold).abs() < bw / 2).to(grad.dtype)
        grad_th = (grad * near * (-threshold / bw)).reshape(-1, pre.shape[-1]).sum(0)
        return grad * (pre > threshold).to(grad.dtype), grad_th, None


class StepSTE(torch.autograd.Function):
    """``H(z − θ)`` (the L0 count); the gradient reaches θ only, through the rectangle kernel."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - threshold).abs() < bw / 2).to(grad.dtype)
        return None, (grad * near * (-1.0 / bw)).reshape(-1, pre.shape[-1]).sum(0), None


# ----------------------------------------------------------------------------------------------------------------
# the run's state


@dataclass
class TrainingState:
    """Everything a checkpoint holds (in normalised units: see the module docstring)."""

    transcoders: dict[int, Transcoder]
    optimizer: torch.optim.Adam
    scale_in: dict[int, float]
    scale_out: dict[int, float]
    since_fired: dict[int, torch.Tensor]  # tokens since each feature was last active
    step: int = 0
    position: int = 0  # windows of the stream consumed
    tokens_seen: int = 0
    elapsed: float = 0.0
    log: list[dict] = field(default_factory=list)

    def params(self) -> list[torch.nn.Parameter]:
        return [p for layer in sorted(self.transcoders) for p in self.transcoders[layer].parameters()]


def _hooks(layers) -> list[str]:
    return [f"blocks.{layer}.mlp.hook_{w}" for layer in layers for w in ("in", "out")]


class StopForward(Exception):
    """Raised by the last hook :func:`layer_activations` needs, so the layers after it (and the unembedding) never
    run."""


def layer_activations(model, tokens: torch.Tensor, mask: torch.Tensor, layers) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The MLP inputs and outputs ``[tokens, d]`` (float32, masked positions only) of every layer in ``layers``,
    from one forward pass that stops at the last layer's ``mlp.hook_out`` (the bridge's ``stop_at_layer`` still
    runs the unembedding; a hook that raises does not)."""
    names = _hooks(sorted(layers))
    seen: dict[str, torch.Tensor] = {}
    m = mask.to(model.cfg.device)

    def hook_for(name: str):
        def save(value, hook):
            seen[name] = value[m].float().cpu()
            if name == names[-1]:
                raise StopForward
            return value

        return save

    try:
        with torch.no_grad():
            model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(n, hook_for(n)) for n in names])
    except StopForward:
        pass
    missing = [n for n in names if n not in seen]
    if missing:
        raise InputError(f"the forward pass never reached the hooks {missing}: does the model run its MLPs there?")
    return {layer: (seen[f"blocks.{layer}.mlp.hook_in"], seen[f"blocks.{layer}.mlp.hook_out"]) for layer in layers}


def _init_state(model, cfg: TranscoderTrainingConfig, stream: TokenStream) -> TrainingState:
    """Transcoders initialised as the module docstring says, the scalars and ``b_dec`` from the first batch."""
    tokens, mask = stream.batch(0, cfg.batch_size)
    acts = layer_activations(model, tokens, mask, cfg.layers)
    gen = torch.Generator().manual_seed(cfg.seed)
    d = model.cfg.d_model
    transcoders, s_in, s_out, since = {}, {}, {}, {}
    for layer in cfg.layers:
        x, y = acts[layer]
        s_in[layer] = float(math.sqrt(x.shape[-1]) / x.norm(dim=-1).mean().clamp_min(1e-12))
        s_out[layer] = float(math.sqrt(y.shape[-1]) / y.norm(dim=-1).mean().clamp_min(1e-12))
        tc = Transcoder(d, cfg.n_features, d, activation=cfg.activation, k=cfg.k, skip=cfg.skip)
        with torch.no_grad():
            w = torch.randn(cfg.n_features, d, generator=gen)
            w /= w.norm(dim=-1, keepdim=True)
            tc.W_dec.copy_(w)
            tc.W_enc.copy_(w.T)
            tc.b_dec.copy_((y * s_out[layer]).mean(0))
            if tc.threshold is not None:
                tc.threshold.fill_(cfg.jumprelu_threshold)
        transcoders[layer] = tc
        since[layer] = torch.zeros(cfg.n_features, dtype=torch.int64)
    params = [p for layer in sorted(transcoders) for p in transcoders[layer].parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    return TrainingState(transcoders, optimizer, s_in, s_out, since)


def lr_at(cfg: TranscoderTrainingConfig, step: int, steps: int) -> float:
    """Constant, then linear decay to 0 over the last ``lr_decay`` share of the steps."""
    start = int(steps * (1 - cfg.lr_decay))
    if step < start or steps <= start:
        return cfg.lr
    return cfg.lr * max(0.0, (steps - step) / (steps - start))


def sparsity_at(cfg: TranscoderTrainingConfig, step: int, steps: int) -> float:
    """The share of λ₁ / λ₀ in force at ``step`` (linear warm-up over ``sparsity_warmup`` of the steps)."""
    warm = int(steps * cfg.sparsity_warmup)
    return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)


class SelectedPre(torch.autograd.Function):
    """The pre-activations of the features ``idx`` (``[tokens, m]``), read from the dense ``pre`` (computed without
    gradients), with the gradients of ``W_enc`` and ``b_enc`` formed from those ``m`` features only (a sparse
    ``[n, tokens] @ [tokens, d]`` product instead of the dense one): the same gradient as a dense TopK's, for the
    cost of the forward product alone."""

    @staticmethod
    def forward(ctx, pre, x, W_enc, b_enc, idx):
        ctx.save_for_backward(x, idx)
        ctx.n = W_enc.shape[1]
        return pre.gather(-1, idx)

    @staticmethod
    def backward(ctx, grad):
        x, idx = ctx.saved_tensors
        n, (t, m) = ctx.n, idx.shape
        rows = torch.stack([idx.reshape(-1), torch.arange(t).repeat_interleave(m)])
        g = torch.sparse_coo_tensor(rows, grad.reshape(-1), (n, t), check_invariants=False)
        grad_w = torch.sparse.mm(g, x.to(grad.dtype)).T
        grad_b = torch.zeros(n, dtype=grad.dtype).index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return None, None, grad_w, grad_b, None


def _selected(tc: Transcoder, pre: torch.Tensor, x: torch.Tensor, idx: torch.Tensor):
    """ReLU'd pre-activations of the features ``idx`` (with gradients, :class:`SelectedPre`) and their output
    ``Σ a·W_dec[idx]`` without the bias, decoding only those rows (``embedding_bag``)."""
    values = torch.relu(SelectedPre.apply(pre, x, tc.W_enc, tc.b_enc, idx))
    return values, torch.nn.functional.embedding_bag(idx, tc.W_dec, per_sample_weights=values, mode="sum")


def _topk_loss(tc: Transcoder, x, y, cfg: TranscoderTrainingConfig, since: torch.Tensor):
    """TopK's loss with AuxK (Gao et al. 2024). The dense pre-activations are computed without gradients only to
    choose the ``k`` features (and the dead ones for AuxK); the gradients flow through the chosen features alone
    (:class:`SelectedPre`), which is what a dense TopK's gradient is, at a fraction of the cost."""
    d_out = y.shape[-1]
    with torch.no_grad():
        pre = tc.pre_acts(x)
        idx = pre.topk(tc.k, dim=-1).indices
    values, out = _selected(tc, pre, x, idx)
    y_hat = out + tc.b_dec
    if tc.W_skip is not None:
        y_hat = y_hat + tc.skip(x)
    err = y - y_hat
    loss = err.pow(2).sum(-1).mean() / d_out
    dead = since >= cfg.dead_tokens
    n_dead = int(dead.sum())
    if n_dead:
        k_aux = min(cfg.aux_k or max(1, x.shape[-1] // 2), n_dead)
        with torch.no_grad():
            aux_idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1).indices
        _, aux_out = _selected(tc, pre, x, aux_idx)
        aux = (err.detach() - aux_out).pow(2).sum(-1).mean() / d_out
        if torch.isfinite(aux):
            loss = loss + cfg.aux_coefficient * aux
    with torch.no_grad():
        on = values > 0
        fired = torch.zeros(tc.n_features, dtype=torch.bool)
        fired[idx[on]] = True
        l0 = float(on.sum(-1).float().mean())
    return loss, err.detach(), l0, fired


def _layer_loss(tc: Transcoder, x, y, cfg: TranscoderTrainingConfig, since: torch.Tensor, lam: float):
    """The loss of one layer's transcoder on normalised ``x``, ``y``; returns (loss, fvu, l0, fired)."""
    if cfg.activation == "topk":
        loss, err, l0, fired = _topk_loss(tc, x, y, cfg, since)
    else:
        pre = tc.pre_acts(x)
        if cfg.activation == "jumprelu":
            acts = JumpReLUSTE.apply(pre, tc.threshold, cfg.jumprelu_bandwidth)
        else:
            acts = tc.activate(pre)
        err = y - tc.decode(acts, x)
        loss = err.pow(2).sum(-1).mean() / y.shape[-1]
        if cfg.activation == "relu":
            loss = loss + lam * cfg.l1_coefficient * (acts * tc.W_dec.norm(dim=-1)).sum(-1).mean() / y.shape[-1]
        else:
            loss = loss + lam * cfg.l0_coefficient * StepSTE.apply(pre, tc.threshold, cfg.jumprelu_bandwidth).sum(-1).mean()
        with torch.no_grad():
            active = acts > 0
            l0 = float(active.sum(-1).float().mean())
            fired = active.any(0)
    with torch.no_grad():
        fvu = float(err.pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12))
    return loss, fvu, l0, fired


def _unit_norm_grad(tc: Transcoder) -> None:
    """Remove the component of the decoder's gradient along each (unit) decoder row."""
    if tc.W_dec.grad is not None:
        w = tc.W_dec.data
        tc.W_dec.grad -= (tc.W_dec.grad * w).sum(-1, keepdim=True) * w


def _train_step(model, state: TrainingState, stream: TokenStream, cfg: TranscoderTrainingConfig, steps: int) -> dict:
    """One optimizer step on the next batch of windows; returns the mean loss, FVU and L0 over layers (and per layer)."""
    tokens, mask = stream.batch(state.position, cfg.batch_size)
    acts = layer_activations(model, tokens, mask, cfg.layers)
    lam = sparsity_at(cfg, state.step, steps)
    state.optimizer.zero_grad(set_to_none=True)
    per_layer = {}
    n_tok = 0
    for layer in cfg.layers:
        x, y = acts[layer]
        n_tok = x.shape[0]
        tc = state.transcoders[layer]
        loss, fvu, l0, fired = _layer_loss(tc, x * state.scale_in[layer], y * state.scale_out[layer], cfg,
                                           state.since_fired[layer], lam)
        loss.backward()
        state.since_fired[layer] += n_tok
        state.since_fired[layer][fired] = 0
        per_layer[layer] = {"loss": float(loss.detach()), "fvu": fvu, "l0": l0,
                            "dead": float((state.since_fired[layer] >= cfg.dead_tokens).float().mean())}
        if cfg.activation != "relu":
            _unit_norm_grad(tc)
    for g in state.optimizer.param_groups:
        g["lr"] = lr_at(cfg, state.step, steps)
    state.optimizer.step()
    with torch.no_grad():
        for tc in state.transcoders.values():
            if cfg.activation != "relu":
                tc.W_dec.data /= tc.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            if tc.threshold is not None:
                tc.threshold.data.clamp_(min=0.0)
    state.step += 1
    state.position += cfg.batch_size
    state.tokens_seen += n_tok
    return per_layer


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: safetensors + JSON


def save_checkpoint(directory: str | Path, state: TrainingState, cfg: TranscoderTrainingConfig, steps: int) -> Path:
    """Write ``state`` to ``directory`` (atomically: temporary files, then renamed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for layer, tc in state.transcoders.items():
        for name, p in tc.named_parameters():
            tensors[f"tc.{layer}.{name}"] = p.detach().contiguous().clone()
        tensors[f"since_fired.{layer}"] = state.since_fired[layer].clone()
    opt = state.optimizer.state_dict()
    for idx, s in opt["state"].items():
        for key, value in s.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).contiguous().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": "codecircuits-transcoder-checkpoint-1",
        "config": cfg.identity(),
        "steps": steps,
        "step": state.step,
        "position": state.position,
        "tokens_seen": state.tokens_seen,
        "elapsed": state.elapsed,
        "scale_in": {str(k): v for k, v in state.scale_in.items()},
        "scale_out": {str(k): v for k, v in state.scale_out.items()},
        "param_groups": opt["param_groups"],
        "log": state.log,
    }
    tmp_t, tmp_j = directory / (STATE_TENSORS + ".tmp"), directory / (STATE_JSON + ".tmp")
    save_file(tensors, str(tmp_t))
    tmp_j.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp_t, directory / STATE_TENSORS)
    os.replace(tmp_j, directory / STATE_JSON)
    return directory


def load_checkpoint(directory: str | Path, state: TrainingState, cfg: TranscoderTrainingConfig) -> int:
    """Restore ``state`` (freshly initialised for ``cfg``) from ``directory``; returns the planned step count."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    if meta.get("config") != cfg.identity():
        diff = {k: (meta.get("config", {}).get(k), v) for k, v in cfg.identity().items() if meta.get("config", {}).get(k) != v}
        raise CheckpointError(
            f"the checkpoint in {directory} was written by a run with other settings (checkpoint, now): {diff}; "
            "resume with the same settings, or point checkpoint_dir at a new folder"
        )
    tensors = load_file(str(directory / STATE_TENSORS))
    with torch.no_grad():
        for layer, tc in state.transcoders.items():
            for name, p in tc.named_parameters():
                p.copy_(tensors[f"tc.{layer}.{name}"])
            state.since_fired[layer] = tensors[f"since_fired.{layer}"].clone()
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    state.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    state.scale_in = {int(k): float(v) for k, v in meta["scale_in"].items()}
    state.scale_out = {int(k): float(v) for k, v in meta["scale_out"].items()}
    state.step, state.position, state.tokens_seen = int(meta["step"]), int(meta["position"]), int(meta["tokens_seen"])
    state.elapsed, state.log = float(meta["elapsed"]), list(meta["log"])
    return int(meta["steps"])


def fold_scales(state: TrainingState, cfg: TranscoderTrainingConfig, meta: dict | None = None) -> TranscoderSet:
    """The transcoders in the model's units: the normalisation scalars folded into the weights."""
    out = {}
    for layer, tc in state.transcoders.items():
        a, b = state.scale_in[layer], state.scale_out[layer]
        new = Transcoder(tc.d_in, tc.n_features, tc.d_out, activation=tc.activation, k=tc.k, skip=tc.W_skip is not None)
        with torch.no_grad():
            new.W_enc.copy_(tc.W_enc * a)
            new.b_enc.copy_(tc.b_enc)
            new.W_dec.copy_(tc.W_dec / b)
            new.b_dec.copy_(tc.b_dec / b)
            if tc.threshold is not None:
                new.threshold.copy_(tc.threshold)
            if tc.W_skip is not None:
                new.W_skip.copy_(tc.W_skip * (a / b))
        out[layer] = new
    return TranscoderSet(out, scan=f"codecircuits-{cfg.activation}-{cfg.n_features}", meta=meta or {})


# ----------------------------------------------------------------------------------------------------------------
# the run


def _check(model, cfg: TranscoderTrainingConfig) -> None:
    n = model.cfg.n_layers
    if not cfg.layers:
        raise InputError("no layers to train: give at least one layer (e.g. layers=[0, 1] or --layers 0-29)")
    bad = [layer for layer in cfg.layers if not 0 <= layer < n]
    if bad:
        raise InputError(f"layers {bad} are out of range: the model has layers 0..{n - 1}")
    if cfg.activation not in ACTIVATIONS:
        raise InputError(f"activation must be one of {ACTIVATIONS}, got {cfg.activation!r}")
    if cfg.activation == "topk" and (cfg.k is None or not 0 < cfg.k <= cfg.n_features):
        raise InputError(f"TopK needs 0 < k <= n_features ({cfg.n_features}); got k={cfg.k}")
    if cfg.n_features < 1 or cfg.batch_size < 1 or cfg.tokens < 1:
        raise InputError("n_features, batch_size and tokens must be positive")
    for hook in _hooks(cfg.layers):
        if hook not in model.hook_dict:
            raise InputError(f"the model has no hook {hook!r}: transcoders read mlp.hook_in and write mlp.hook_out")


def train_transcoders(
    model,
    layers=None,
    n_features: int = 4096,
    *,
    k: int | None = 32,
    activation: str = "topk",
    skip: bool = False,
    corpora=None,
    texts=None,
    tokens: int = 1_000_000,
    window: int = 128,
    batch_size: int = 32,
    lr: float = 5e-4,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    log_every: int = 10,
    progress: bool = True,
    **options,
) -> TranscoderTrainingResult:
    """Train a transcoder for each of ``layers`` (default: all) of ``model`` and return the set (in the model's
    units) with its log. See the module docstring for the method.

    ``tokens`` training tokens are streamed in batches of ``batch_size`` windows of ``window`` tokens from
    ``texts`` (a list of source texts) or ``corpora`` (specs such as ``"stdlib:train"``; default: the training
    corpora of :func:`codecircuits.transcoders.data.default_corpora`). ``k`` is TopK's features per token (ignored
    by the other activations). Further settings of :class:`TranscoderTrainingConfig` (``l1_coefficient``,
    ``l0_coefficient``, ``aux_k``, ``dead_tokens``, ...) go in ``options``.

    With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every`` steps and when the run stops; with
    ``resume`` (default) a run finds its checkpoint there and continues, giving the weights the uninterrupted run
    would have. ``max_steps`` / ``max_minutes`` stop early (``finished`` is False; call again to continue).
    """
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(int(x) for x in layers)
    unknown = set(options) - {f for f in TranscoderTrainingConfig.__dataclass_fields__}
    if unknown:
        raise InputError(f"unknown training options {sorted(unknown)}; see TranscoderTrainingConfig for the settings")
    if texts is not None and corpora is not None:
        raise InputError("give texts or corpora, not both")
    if texts is None:  # named in full, so a resume after `codecircuits corpus fetch` still reads the same data
        corpora = default_corpora("train") if corpora is None else ((corpora,) if isinstance(corpora, str) else corpora)
    digest = None if texts is None else hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    cfg = TranscoderTrainingConfig(
        layers=layers, n_features=n_features, activation=activation, k=k if activation == "topk" else None, skip=skip,
        corpora=None if corpora is None else tuple(corpora), texts_digest=digest,
        tokens=tokens, window=window, batch_size=batch_size, lr=lr, seed=seed, **options,
    )
    _check(model, cfg)
    stream = token_stream(model, cfg.corpora, texts=texts, tokens=tokens, window=window, seed=seed)
    steps = max(1, math.ceil(tokens / (batch_size * stream.mean_window)))
    state = _init_state(model, cfg, stream)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume and (ckpt / STATE_JSON).exists():
        steps = load_checkpoint(ckpt, state, cfg)
    return _run(model, cfg, stream, state, steps, ckpt, checkpoint_every, max_steps, max_minutes, log_every, progress)


def _run(model, cfg, stream, state, steps, ckpt, checkpoint_every, max_steps, max_minutes, log_every, progress):
    start, start_tokens, start_elapsed = time.perf_counter(), state.tokens_seen, state.elapsed
    stop_at = steps if max_steps is None else min(steps, max_steps)
    bar = progress_bar(steps, f"transcoders ({len(cfg.layers)} layers)", enabled=progress)
    bar.update(state.step)
    try:
        while state.step < stop_at:
            if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                break
            per_layer = _train_step(model, state, stream, cfg, steps)
            state.elapsed = start_elapsed + time.perf_counter() - start
            if state.step % log_every == 0 or state.step == steps:
                state.log += [{"step": state.step, "tokens": state.tokens_seen, "layer": layer, **v}
                              for layer, v in per_layer.items()]
            mean = {key: sum(v[key] for v in per_layer.values()) / len(per_layer) for key in ("loss", "fvu", "l0")}
            bar.set_postfix(loss=f"{mean['loss']:.4f}", fvu=f"{mean['fvu']:.3f}", L0=f"{mean['l0']:.1f}")
            bar.update(1)
            if ckpt is not None and state.step % checkpoint_every == 0:
                save_checkpoint(ckpt, state, cfg, steps)
    except KeyboardInterrupt:
        if ckpt is not None:
            save_checkpoint(ckpt, state, cfg, steps)
        raise
    finally:
        bar.close()
    if ckpt is not None:
        save_checkpoint(ckpt, state, cfg, steps)
    wall = time.perf_counter() - start
    ran = state.tokens_seen - start_tokens
    meta = {"model": str(getattr(model.cfg, "model_name", "")), "training": cfg.identity(), "steps": state.step,
            "tokens_seen": state.tokens_seen, "corpora": list(stream.names)}
    return TranscoderTrainingResult(
        transcoders=fold_scales(state, cfg, meta), config=cfg, steps=steps, steps_done=state.step,
        finished=state.step >= steps, tokens_seen=state.tokens_seen, wall_seconds=state.elapsed, log=list(state.log),
        tokens_per_second=ran / wall if wall > 0 and ran else None,
    )


__all__ = [
    "JumpReLUSTE",
    "SelectedPre",
    "StepSTE",
    "TranscoderTrainingConfig",
    "TranscoderTrainingResult",
    "fold_scales",
    "layer_activations",
    "load_checkpoint",
    "lr_at",
    "save_checkpoint",
    "sparsity_at",
    "train_transcoders",
]
