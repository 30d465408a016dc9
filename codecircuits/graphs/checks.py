"""Checks of an attribution graph: against the linearised model it claims to describe, and against the real model.

- :func:`linearised_inputs` runs the local replacement model as a forward pass of its own (attention patterns and
  norm scales *set* to the prompt's values by hooks, every MLP output rebuilt from the graph's node values, each
  source node scaled by a factor) and returns every node's input. It shares no code with the backward passes that
  build the graph, so it is the reference for :func:`check_edges`: zeroing a source must change every target's
  input by minus its edge, and each node's incoming edges plus the constant part (biases, with every node zeroed)
  must sum to its input.
- :func:`intervene` ablates the graph's most influential feature nodes one at a time in the *real* model (attention
  and every nonlinearity live; the MLPs are the model's own), measures the change of the target logit, and sets it
  beside the graph's prediction: the total effect through the linearised graph (each feature passing a change of
  its input on with its gain). The same for random feature nodes of matched activation, as the control.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .basis import as_basis, work_dtype
from .graph import Graph


def _state(model, tokens, basis, graph: Graph):
    """The clean run's frozen quantities and the graph's MLP decomposition (error = the output minus the graph's
    features, the bias and the skip path), per layer."""
    names = lambda n: n.endswith("hook_pattern") or n.endswith("hook_scale") or ".mlp.hook_" in n or n == "blocks.0.hook_resid_pre"  # noqa: E731
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    covered = set(basis.layers(model))
    wd = work_dtype(model)
    decomposition = {}
    for layer in range(model.cfg.n_layers):
        out = cache[f"blocks.{layer}.mlp.hook_out"][0].to(wd)
        here = (graph.feature_layer == layer).nonzero().flatten()
        if layer not in covered:
            decomposition[layer] = (here, None, torch.zeros_like(out), out)
            continue
        dec = basis.decoder(model, layer).to(wd)
        x = cache[f"blocks.{layer}.mlp.hook_in"][0].to(wd)
        recon = torch.zeros_like(out).index_put((graph.feature_pos[here],), graph.activations[here, None].to(wd) * dec[graph.feature_index[here]], accumulate=True)
        skip = basis.skip(layer, x)
        bias = basis.out_bias(model, layer).to(wd)
        error = out - recon - bias - (0 if skip is None else skip.to(wd))
        decomposition[layer] = (here, dec, bias, error)
    return cache, decomposition


def linearised_inputs(model, graph: Graph, basis, factors: torch.Tensor, *, state=None) -> torch.Tensor:
    """Every node's input (``[k, n_nodes]``, NaN for error and token nodes) in the linearised model with source node
    ``s`` scaled by ``factors[i, s]`` in run ``i`` (``factors`` is ``[k, n_nodes]``; 1 everywhere is the prompt)."""
    basis = as_basis(basis)
    basis.check(model)
    tokens = torch.tensor([graph.tokens], device=model.cfg.device)
    cache, decomposition = state or _state(model, tokens, basis, graph)
    k, n_pos, wd = factors.shape[0], graph.n_pos, work_dtype(model)
    factors = factors.to(wd)
    f_feat = factors[:, : graph.n_features]
    f_err = factors[:, graph.error_start : graph.token_start].reshape(k, graph.n_layers, n_pos)
    f_tok = factors[:, graph.token_start : graph.logit_start]
    xs = {}

    def fixed(t, hook, name):
        return cache[name].expand_as(t).to(t.dtype)

    def embed(t, hook):
        return (cache["blocks.0.hook_resid_pre"].to(wd) * f_tok[:, :, None]).to(t.dtype)

    def mlp_in(t, hook, layer):
        xs[layer] = t.to(wd)
        return t

    def mlp_out(t, hook, layer):
        here, dec, bias, error = decomposition[layer]
        out = bias + error * f_err[:, layer, :, None]
        if dec is not None:
            values = graph.activations[here].to(wd) * f_feat[:, here]  # [k, n_here]
            contrib = torch.zeros(k, n_pos, dec.shape[1], dtype=wd)
            contrib.index_add_(1, graph.feature_pos[here], values[:, :, None] * dec[graph.feature_index[here]][None])
            out = out + contrib
            skip = basis.skip(layer, xs[layer])
            out = out + (0 if skip is None else skip)
        return out.to(t.dtype)

    hooks = [(n, lambda t, hook, n=n: fixed(t, hook, n)) for n in cache if n.endswith("hook_pattern") or n.endswith("hook_scale")]
    hooks.append(("blocks.0.hook_resid_pre", embed))
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.mlp.hook_in", lambda t, hook, layer=layer: mlp_in(t, hook, layer)))
        hooks.append((f"blocks.{layer}.mlp.hook_out", lambda t, hook, layer=layer: mlp_out(t, hook, layer)))
    with torch.no_grad():
        logits = model.run_with_hooks(tokens.expand(k, -1), fwd_hooks=hooks)[:, -1].to(wd)
    inputs = torch.full((k, graph.n_nodes), float("nan"), dtype=wd)
    for layer in sorted(set(graph.feature_layer.tolist())):
        here = (graph.feature_layer == layer).nonzero().flatten()
        enc = graph.encoders[here].to(wd)
        inputs[:, here] = (xs[layer][:, graph.feature_pos[here]] * enc[None]).sum(-1)
    inputs[:, graph.logit_start :] = logits @ graph.target_directions.to(wd).T
    return inputs


@dataclass
class EdgeCheck:
    """How far the graph is from the linearised model: the largest error of a perturbed column and of the sums of
    incoming edges, each relative to the largest |entry| (of that column, or of the adjacency)."""

    sources: list[int]
    column_error: float  # max over checked sources of max_t |Δinput_t + A[t, s]| / max |A|
    sum_error: float  # max_t |Σ_s A[t, s] + constant_t − input_t| / max |input|
    input_error: float  # max |graph's stored inputs − the linearised model's inputs at the prompt| / max |input|
    details: list[dict] = field(default_factory=list)


def check_edges(model, graph: Graph, basis, *, sources=None, n_sources: int = 6, seed: int = 0) -> EdgeCheck:
    """Zero each of ``sources`` (node indices; by default ``n_sources`` drawn among feature, error and token nodes)
    in the linearised model and compare the change of every node's input with minus its column of the adjacency;
    zero every node to get the constant part and compare each row's sum with the node's input."""
    basis = as_basis(basis)
    basis.check(model)
    tokens = torch.tensor([graph.tokens])
    state = _state(model, tokens, basis, graph)
    if sources is None:
        rng = np.random.default_rng(seed)
        pools = [range(graph.n_features), range(graph.error_start, graph.token_start), range(graph.token_start, graph.logit_start)]
        sources = sorted({int(rng.choice(list(pool))) for pool in pools if len(pool) for _ in range(max(1, n_sources // 3))})
    factors = torch.ones(len(sources) + 2, graph.n_nodes)
    for i, s in enumerate(sources):
        factors[i, s] = 0.0
    factors[-1, : graph.logit_start] = 0.0  # every source off: the constant part
    inputs = linearised_inputs(model, graph, basis, factors, state=state)
    base, constant = inputs[-2], inputs[-1]
    targets = ~torch.isnan(base)
    scale = graph.adjacency.abs().max().clamp_min(1e-12)
    details, column_error = [], 0.0
    for i, s in enumerate(sources):
        delta = (inputs[i] - base)[targets]
        err = float((delta + graph.adjacency[targets, s]).abs().max() / scale)
        details.append({"source": graph.describe(s), "error": err})
        column_error = max(column_error, err)
    stored = graph.node_inputs()
    in_scale = stored[targets].abs().max().clamp_min(1e-12)
    sums = graph.adjacency[targets].sum(1) + constant[targets]
    return EdgeCheck(
        sources=list(sources),
        column_error=column_error,
        sum_error=float((sums - base[targets]).abs().max() / in_scale),
        input_error=float((stored[targets] - base[targets]).abs().max() / in_scale),
        details=details,
    )


def predicted_effects(graph: Graph, nodes: list[int], target: int = 0) -> torch.Tensor:
    """The change of logit target ``target``'s input when each feature node of ``nodes`` is zeroed, predicted by the
    linearised graph: Δa = δ + gain ⊙ (M Δa) over features (``M = A / activation``), to convergence; then
    ``M[logit] · Δa``."""
    n = graph.n_features
    acts = graph.activations
    safe = torch.where(acts.abs() > 1e-12, acts, torch.ones_like(acts))
    M = torch.where(acts.abs()[None, :] > 1e-12, graph.adjacency[:, :n] / safe[None, :], torch.zeros(()))
    delta = torch.zeros(n, len(nodes), dtype=M.dtype)
    for j, node in enumerate(nodes):
        delta[node, j] = -graph.activations[node]
    da = delta.clone()
    for _ in range(graph.n_layers + 2):
        da = delta + graph.gains[:, None] * (M[:n] @ da)
    return M[graph.logit_start + target] @ da


def measured_effects(model, graph: Graph, basis, nodes: list[int], target: int = 0, *, fraction: float = 1.0, frozen: bool = False) -> torch.Tensor:
    """The change of logit target ``target``'s input when ``fraction`` of each feature node of ``nodes`` is removed
    from its MLP's output (its activation times its decoder row, times ``fraction``, subtracted) in the real model;
    with ``frozen``, attention patterns and norm scales are held at the prompt's (the MLPs stay live)."""
    basis = as_basis(basis)
    basis.check(model)
    tokens = torch.tensor([graph.tokens], device=model.cfg.device)
    direction = graph.target_directions[target].double()
    fixed = []
    with torch.no_grad():
        if frozen:
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern") or n.endswith("hook_scale"))
            fixed = [(n, lambda t, hook, n=n: cache[n].to(t.dtype)) for n in cache]
        base = float(model(tokens)[0, -1].double() @ direction)
        out = []
        for node in nodes:
            layer, pos, feat = int(graph.feature_layer[node]), int(graph.feature_pos[node]), int(graph.feature_index[node])
            vec = fraction * float(graph.activations[node]) * basis.decoder(model, layer)[feat].double()

            def hook(t, hook, pos=pos, vec=vec):
                t = t.clone()
                t[:, pos] -= vec.to(t.dtype)
                return t

            logits = model.run_with_hooks(tokens, fwd_hooks=fixed + [(f"blocks.{layer}.mlp.hook_out", hook)])
            out.append(float(logits[0, -1].double() @ direction) - base)
    return torch.tensor(out)


@dataclass
class InterventionCheck:
    """Measured against predicted effects of ablating the top feature nodes, beside random nodes of matched
    activation. ``correlation`` and ``slope`` (least squares of measured on predicted) per group."""

    rows: list[dict]
    correlation: float
    slope: float
    random_correlation: float
    random_slope: float
    target: str

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def top(self, k: int = 10):
        """The ``k`` ablated nodes of largest |measured| change, largest first (both groups)."""
        frame = self.to_dataframe()
        return frame.reindex(frame.measured.abs().sort_values(ascending=False, kind="stable").index).head(k).reset_index(drop=True)

    def plot(self):
        from ..figures import bars

        frame = self.to_dataframe()
        return bars([f"{r.group}: {r['name']}" for _, r in frame.iterrows()], frame.measured.to_numpy(),
                    title=f"Measured change of {self.target!r} per ablated node", value_title="Δ logit")

    def summary(self) -> dict:
        return {"target": self.target, "correlation": self.correlation, "slope": self.slope,
                "random_correlation": self.random_correlation, "random_slope": self.random_slope, "n": len(self.rows) // 2}


def _fit(pred: np.ndarray, meas: np.ndarray) -> tuple[float, float]:
    if len(pred) < 2 or np.std(pred) == 0 or np.std(meas) == 0:
        return float("nan"), float("nan")
    corr = float(np.corrcoef(pred, meas)[0, 1])
    slope = float(np.polyfit(pred, meas, 1)[0])
    return corr, slope


def intervene(model, graph: Graph, basis, *, k: int = 10, target: int = 0, seed: int = 0, fraction: float = 1.0, frozen: bool = False) -> InterventionCheck:
    """Ablate the ``k`` feature nodes of largest influence one at a time in the real model, and ``k`` random feature
    nodes of matched activation (for each top node, a random other node among the ``5`` of nearest |activation|);
    compare the measured change of the target's logit with the graph's prediction.

    ``fraction`` removes that share of each node (1: ablation; small: a first-order steer). ``frozen`` holds the
    attention patterns and norm scales at the prompt's: with a small ``fraction`` the measurement is then the
    graph's own first-order prediction, which is how the tests check the propagation; without it, the gap between
    prediction and measurement is what freezing attention and norms leaves out of the graph."""
    n = graph.n_features
    if n == 0:
        return InterventionCheck([], float("nan"), float("nan"), float("nan"), float("nan"), graph.target_names[target])
    inf = graph.influence()[:n]
    top = inf.argsort(descending=True)[: min(k, n)].tolist()
    rng = np.random.default_rng(seed)
    others = [i for i in range(n) if i not in set(top)]
    matched = []
    if others:
        acts = graph.activations.abs().numpy()
        for node in top:
            pool = sorted(others, key=lambda j: abs(acts[j] - acts[node]))[:5]
            matched.append(int(rng.choice(pool)))
    rows = []
    for group, nodes in (("top", top), ("random", matched)):
        if not nodes:
            continue
        pred = fraction * predicted_effects(graph, nodes, target)
        meas = measured_effects(model, graph, basis, nodes, target, fraction=fraction, frozen=frozen)
        rows += [{"group": group, "node": graph.node_id(v), "name": graph.describe(v), "activation": float(graph.activations[v]),
                  "predicted": float(p), "measured": float(m)} for v, p, m in zip(nodes, pred, meas)]
    frame = {g: [(r["predicted"], r["measured"]) for r in rows if r["group"] == g] for g in ("top", "random")}
    fits = {g: _fit(np.array([p for p, _ in v]), np.array([m for _, m in v])) for g, v in frame.items()}
    return InterventionCheck(rows, *fits["top"], *fits["random"], target=graph.target_names[target])
