"""Attribution graphs: the direct effects between the nodes of a prompt's local replacement model.

The local replacement model (circuit-tracer; Ameisen et al. 2025, "Circuit Tracing") is the model at one prompt
with every MLP output written in a :mod:`~.basis` (features or neurons, plus an error term, so the forward pass is
unchanged), and the attention patterns and normalisation scales frozen at their values for the prompt. With the
MLPs' outputs held as constants, everything from a node to any later node's input is then linear, through the
residual stream, frozen attention (values and outputs only) and frozen norms.

**Nodes**, in circuit-tracer's order: feature nodes (active features, layer, position, feature), one error node
per (layer, position), the token embeddings (the residual stream entering block 0, position embeddings included),
and the logit targets.

**Edges.** ``A[t, s]`` is the direct effect of source ``s`` on target ``t``'s input: the source's value (a feature's
activation times its decoder row, an error vector, an embedding) contracted with the gradient of the target's
input with respect to the residual stream where the source writes it, in the frozen model with every MLP output
held constant (except a transcoder's skip path, which is linear in the MLP's input). A feature target's input is
``enc_f · x[l, p]``; a logit target's is its direction over the vocabulary, demeaned, dotted with the last
position's logits. Rows are computed in batches of backward passes through one batched forward pass (the gradients
of different rows never mix: each row owns a batch element).

**The cap.** When more features are active than ``max_feature_nodes`` (the neuron basis: every neuron of every
position), nodes are chosen best-first: the logit rows give each feature an influence estimate (its share of the
normalised |edges| into the logits, weighted by the targets' weights); the features of highest estimate get their
rows next, which pass their estimate on to their sources, until the cap is reached; then the graph's rows are
computed over the chosen features. Features left out are folded into their position's error node, so every node's
incoming edges still sum to its input (the error node then holds the transcoder's error plus the left-out
features; ``graph.meta`` records how much).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..core.batching import DEFAULT_MEMORY_BUDGET, parse_budget, progress_bar, to_tokens
from ..core.inputs import single_token_id, token_texts
from ..errors import InputError
from .basis import Basis, as_basis, work_dtype
from .graph import Graph


@dataclass
class LogitTargets:
    """The logit nodes: a name and a direction over the vocabulary each (demeaned), with the weights pruning gives
    them (their probabilities for token targets; equal shares summing to 1 for custom directions)."""

    names: list[str]
    token_ids: list[int]  # -1 for a custom direction
    directions: torch.Tensor  # [n, d_vocab]
    weights: torch.Tensor  # [n]
    probabilities: torch.Tensor  # [n], NaN for a custom direction


def logit_targets(model, last_logits: torch.Tensor, targets=None, *, max_n_logits: int = 10, desired_logit_prob: float = 0.95) -> LogitTargets:
    """The logit nodes of a graph.

    ``targets`` is ``None`` (the most probable next tokens until their probability reaches ``desired_logit_prob``,
    at most ``max_n_logits``), a list of tokens (strings of one token, or ids), or a dict from a name to a direction:
    a tensor over the vocabulary, or a pair ``(plus, minus)`` of tokens for a logit difference (``{"))) - ))":
    (")))", "))")}``)."""
    probs = torch.softmax(last_logits.float(), dim=-1)
    vocab = probs.shape[-1]

    def token_id(t):
        return int(t) if isinstance(t, int) else single_token_id(model, t)

    names, ids, dirs = [], [], []
    if targets is None:
        order = probs.argsort(descending=True)
        cum = probs[order].cumsum(0)
        n = int(min(max_n_logits, int((cum < desired_logit_prob).sum()) + 1))
        for tid in order[:n].tolist():
            names.append(token_texts(model.tokenizer, [tid])[0]), ids.append(tid)
            dirs.append(torch.nn.functional.one_hot(torch.tensor(tid), vocab).float())
    elif isinstance(targets, dict):
        for name, spec in targets.items():
            if isinstance(spec, tuple | list) and len(spec) == 2:
                d = torch.zeros(vocab)
                d[token_id(spec[0])] += 1
                d[token_id(spec[1])] -= 1
            else:
                d = torch.as_tensor(spec, dtype=torch.float32).flatten()
                if d.numel() != vocab:
                    raise InputError(f"the direction of target {name!r} has {d.numel()} entries; the vocabulary has {vocab}")
            names.append(str(name)), ids.append(-1), dirs.append(d)
    else:
        if isinstance(targets, str | int):
            targets = [targets]
        for t in targets:
            tid = token_id(t)
            names.append(token_texts(model.tokenizer, [tid])[0]), ids.append(tid)
            dirs.append(torch.nn.functional.one_hot(torch.tensor(tid), vocab).float())
    if not names:
        raise InputError("no logit targets: give at least one token or direction")
    directions = torch.stack(dirs)
    directions = directions - directions.mean(dim=1, keepdim=True)
    p = torch.tensor([float(probs[i]) if i >= 0 else float("nan") for i in ids])
    weights = p.clone() if all(i >= 0 for i in ids) else torch.full((len(ids),), 1.0 / len(ids))
    return LogitTargets(names, ids, directions, weights, p)


class FrozenRun:
    """One batched forward pass of the local replacement model, kept for many backward passes.

    Attention patterns and norm scales are detached (frozen); every MLP output is a leaf tensor (its value at the
    prompt) plus the basis's skip path of the MLP input; the residual stream entering block 0 is a leaf too.
    :meth:`gradients` injects one target per batch element and returns the gradients at every MLP output leaf and
    at the embeddings."""

    def __init__(self, model, tokens: torch.Tensor, basis: Basis, batch: int):
        self.model, self.batch = model, batch
        self.n_layers = model.cfg.n_layers
        self.covered = set(basis.layers(model))
        self.x: dict[int, torch.Tensor] = {}
        self.leaves: dict[int, torch.Tensor] = {}
        self.emb: torch.Tensor | None = None

        def freeze(t, hook):
            return t.detach()

        def embed(t, hook):
            self.emb = t.detach().requires_grad_(True)
            return self.emb

        def mlp_in(t, hook, layer):
            self.x[layer] = t
            return t

        def mlp_out(t, hook, layer):
            leaf = t.detach().requires_grad_(True)
            self.leaves[layer] = leaf
            skip = basis.skip(layer, self.x[layer]) if layer in self.covered else None
            return leaf if skip is None else leaf + (skip - skip.detach())

        hooks = [(n, freeze) for n in model.hook_dict if n.endswith("hook_pattern") or n.endswith("hook_scale")]
        hooks.append(("blocks.0.hook_resid_pre", embed))
        for layer in range(self.n_layers):
            hooks.append((f"blocks.{layer}.mlp.hook_in", lambda t, hook, layer=layer: mlp_in(t, hook, layer)))
            hooks.append((f"blocks.{layer}.mlp.hook_out", lambda t, hook, layer=layer: mlp_out(t, hook, layer)))
        with torch.enable_grad():
            logits = model.run_with_hooks(tokens.expand(batch, -1), fwd_hooks=hooks)
            self.last_logits = logits[:, -1, :]

    def gradients(self, layer_grads: dict[int, torch.Tensor], logit_grad: torch.Tensor | None):
        """Gradients ``(g_emb [B, pos, d], {layer: g [B, pos, d]})`` of the injected target inputs."""
        outputs = [self.x[layer] for layer in layer_grads]
        grads_out = list(layer_grads.values())
        if logit_grad is not None:
            outputs.append(self.last_logits)
            grads_out.append(logit_grad.to(self.last_logits.dtype))
        inputs = [self.emb] + [self.leaves[layer] for layer in range(self.n_layers)]
        gs = torch.autograd.grad(outputs, inputs, grads_out, retain_graph=True, allow_unused=True)
        zero = torch.zeros_like(self.emb)
        return (gs[0] if gs[0] is not None else zero), {
            layer: (g if g is not None else zero) for layer, g in zip(range(self.n_layers), gs[1:])
        }


@dataclass
class Features:
    """The active features of a prompt, in node order (layer, position, feature), with their values."""

    layer: torch.Tensor  # [n] long
    pos: torch.Tensor
    index: torch.Tensor
    value: torch.Tensor  # activation
    gain: torch.Tensor  # d activation / d input
    input: torch.Tensor  # enc · x, the node's input

    def __len__(self):
        return len(self.layer)

    def subset(self, keep: torch.Tensor) -> Features:
        return Features(*(getattr(self, f)[keep] for f in ("layer", "pos", "index", "value", "gain", "input")))


class Columns:
    """The source columns of a block of rows: features (a :class:`Features` subset), then the error nodes
    (``n_layers × pos``, layer-major), then the token embeddings (``pos``). :meth:`contract` turns a batch's
    gradients into those columns: each source's value dotted with the gradient where it writes."""

    def __init__(self, model, basis, feats: Features, errors: torch.Tensor, emb: torch.Tensor):
        self.n_feat, self.errors, self.emb = len(feats), errors, emb  # errors [L, pos, d], emb [pos, d]
        wd = self.dtype = errors.dtype
        self.groups = []  # (layer, pos, columns, feature ids, values, dense?, scaled decoder or None)
        decoders = {}
        for layer in sorted(set(feats.layer.tolist())):
            decoders[layer] = basis.decoder(model, layer).to(wd)
            in_layer = (feats.layer == layer).nonzero().flatten()
            n = decoders[layer].shape[0]
            for p in sorted(set(feats.pos[in_layer].tolist())):
                cols = in_layer[feats.pos[in_layer] == p]
                ids, vals = feats.index[cols], feats.value[cols].to(wd)
                dense = len(ids) * 8 >= n
                scaled = None if dense else decoders[layer][ids] * vals[:, None]
                if dense and len(ids) == n and bool((ids == torch.arange(n)).all()):
                    ids = None  # every feature of the position, in order: no gather
                self.groups.append((layer, p, cols, ids, vals, dense, scaled))
        self.decoders = decoders

    @property
    def n(self) -> int:
        return self.n_feat + self.errors.shape[0] * self.errors.shape[1] + self.emb.shape[0]

    def contract(self, g_emb: torch.Tensor, g_layers: dict[int, torch.Tensor], below: int | None = None) -> torch.Tensor:
        """The row block of a batch. ``below``: the batch's targets all read layers below it, so the gradients at
        that layer's MLP output and above are zero and their columns are skipped."""
        B = g_emb.shape[0]
        wd = self.dtype
        out = torch.zeros(B, self.n, dtype=wd)
        for layer, p, cols, ids, vals, dense, scaled in self.groups:
            if below is not None and layer >= below:
                continue
            g = g_layers[layer][:, p, :].to(wd)
            if not dense:
                block = g @ scaled.T
            else:
                block = g @ self.decoders[layer].T
                block = (block if ids is None else block[:, ids]) * vals
            out.index_copy_(1, cols, block)
        g_all = torch.stack([g_layers[layer].to(wd) for layer in range(self.errors.shape[0])], dim=1)  # [B, L, pos, d]
        out[:, self.n_feat : self.n_feat + self.errors[:, :, 0].numel()] = torch.einsum("blpd,lpd->blp", g_all, self.errors).reshape(B, -1)
        out[:, self.n - self.emb.shape[0] :] = torch.einsum("bpd,pd->bp", g_emb.to(wd), self.emb)
        return out


def _prompt_state(model, tokens, basis: Basis, exclude_positions=()):
    """The clean run: logits, each layer's MLP input and output, and the basis's active features."""
    names = {"blocks.0.hook_resid_pre"}
    for layer in range(model.cfg.n_layers):
        names |= {f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out"}
    for layer in basis.layers(model):
        names |= set(basis.hooks(layer))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    wd = work_dtype(model)
    parts = {k: [] for k in ("layer", "pos", "index", "value", "gain", "input")}
    acts = {}
    for layer in basis.layers(model):
        a, gain = basis.activations(model, layer, cache)
        if exclude_positions:  # no feature nodes there: their MLP output is all error
            a = a.clone()
            a[list(exclude_positions)] = 0
        acts[layer] = a
        pos, idx = (a != 0).nonzero(as_tuple=True)
        x = cache[f"blocks.{layer}.mlp.hook_in"][0].to(wd)
        parts["layer"].append(torch.full_like(pos, layer))
        parts["pos"].append(pos), parts["index"].append(idx)
        parts["value"].append(a[pos, idx].to(wd)), parts["gain"].append(gain[pos, idx].to(wd))
        inputs = [
            (x[pos[i : i + 8192]] * basis.encoders(model, layer, cache, pos[i : i + 8192], idx[i : i + 8192]).to(wd)).sum(-1)
            for i in range(0, len(pos), 8192)
        ]
        parts["input"].append(torch.cat(inputs) if inputs else torch.zeros(0, dtype=wd))
    feats = Features(**{k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()})
    return logits[0, -1], cache, acts, feats


def _node_encoders(model, basis, cache, feats: Features) -> torch.Tensor:
    """The input direction of every feature node of ``feats`` (``[n, d_model]``)."""
    out = torch.zeros(len(feats), model.cfg.d_model, dtype=work_dtype(model))
    for layer in feats.layer.unique().tolist():
        here = (feats.layer == layer).nonzero().flatten()
        out[here] = basis.encoders(model, layer, cache, feats.pos[here], feats.index[here]).to(out.dtype)
    return out


def _errors(model, basis, cache, acts, feats: Features, keep: torch.Tensor) -> torch.Tensor:
    """Error vectors ``[n_layers, pos, d]``: the MLP output minus the kept features, the bias and the skip path
    (the whole output where the basis does not cover a layer)."""
    errs, wd = [], work_dtype(model)
    dropped = feats.subset(~keep)
    for layer in range(model.cfg.n_layers):
        out = cache[f"blocks.{layer}.mlp.hook_out"][0].to(wd)
        if layer not in acts:
            errs.append(out)
            continue
        x = cache[f"blocks.{layer}.mlp.hook_in"][0].to(wd)
        dec = basis.decoder(model, layer).to(wd)
        recon = acts[layer].to(wd) @ dec + basis.out_bias(model, layer).to(wd)
        skip = basis.skip(layer, x)
        err = out - recon - (0 if skip is None else skip.to(wd))
        here = dropped.layer == layer
        if here.any():  # left-out features join their position's error node
            err = err.index_put((dropped.pos[here],), dropped.value[here, None] * dec[dropped.index[here]], accumulate=True)
        errs.append(err)
    return torch.stack(errs)


def _rows(run: FrozenRun, model, basis, cache, feats: Features, targets: LogitTargets, columns: Columns, which: torch.Tensor, n_logits: bool, bar):
    """Rows for the logit targets (when ``n_logits``) and for the features ``which`` (indices into ``feats``),
    in that order, as a ``[rows, columns.n]`` tensor."""
    B, pos, d = run.batch, run.emb.shape[1], run.emb.shape[2]
    blocks = []
    if n_logits:
        n = targets.directions.shape[0]
        for start in range(0, n, B):
            chunk = targets.directions[start : start + B]
            g = torch.zeros(B, chunk.shape[1])
            g[: len(chunk)] = chunk
            g_emb, g_layers = run.gradients({}, g)
            blocks.append(columns.contract(g_emb, g_layers)[: len(chunk)])
            bar.update(len(chunk))
    order = which[torch.argsort(feats.layer[which], stable=True)]
    rows = torch.empty(len(which), columns.n, dtype=columns.dtype)
    where = {int(j): i for i, j in enumerate(which.tolist())}
    for start in range(0, len(order), B):
        chunk = order[start : start + B]
        grads = {}
        for layer in feats.layer[chunk].unique().tolist():
            slots = (feats.layer[chunk] == layer).nonzero().flatten()
            nodes = chunk[slots]
            grads[layer] = torch.zeros(B, pos, d, dtype=run.x[layer].dtype)
            enc = basis.encoders(model, layer, cache, feats.pos[nodes], feats.index[nodes])
            grads[layer][slots, feats.pos[nodes]] = enc.to(grads[layer].dtype)
        g_emb, g_layers = run.gradients(grads, None)
        block = columns.contract(g_emb, g_layers, below=max(grads))
        for b, j in enumerate(chunk.tolist()):
            rows[where[j]] = block[b]
        bar.update(len(chunk))
    blocks.append(rows)
    return torch.cat(blocks)


def _select(run, model, basis, cache, feats, targets, errors, emb, cap: int, bar) -> torch.Tensor:
    """Best-first choice of ``cap`` features (see the module docstring); returns a boolean mask over ``feats``."""
    columns = Columns(model, basis, feats, errors, emb)
    logit_rows = _rows(run, model, basis, cache, feats, targets, columns, torch.zeros(0, dtype=torch.long), True, bar)
    norm = logit_rows.abs()
    norm = norm / norm.sum(1, keepdim=True).clamp_min(1e-10)
    influence = (targets.weights[:, None] * norm).sum(0)[: len(feats)]
    visited = torch.zeros(len(feats), dtype=torch.bool)
    while int(visited.sum()) < cap:
        score = influence.masked_fill(visited, -1.0)
        take = min(run.batch, cap - int(visited.sum()))
        chunk = score.topk(take).indices
        if score[chunk].max() <= 0:  # nothing left with influence: the largest activations fill the cap
            rest = (~visited).nonzero().flatten()
            chunk = rest[feats.value[rest].abs().topk(min(take, len(rest))).indices]
        rows = _rows(run, model, basis, cache, feats, targets, columns, chunk, False, bar).abs()
        rows = rows / rows.sum(1, keepdim=True).clamp_min(1e-10)
        influence = influence + (influence[chunk, None].clamp_min(0) * rows[:, : len(feats)]).sum(0)
        visited[chunk] = True
    return visited


def default_batch(model, n_pos: int, n_columns: int, memory_budget) -> int:
    """Rows per backward pass within ``memory_budget`` bytes: the batched forward pass keeps about
    ``n_layers × pos × d_model × 48`` floats per batch element (attention and norm activations, the residual
    stream, the MLP leaves, and what the bridge's hooks keep), the logits, and the row block's columns with the
    copies the best-first choice makes of them. (The factor 48 is measured: with 24, the default model's neuron
    graph of a 24-token prompt peaked at 2.1 times a 2 GiB budget.)"""
    budget = parse_budget(memory_budget, default=DEFAULT_MEMORY_BUDGET)
    cfg = model.cfg
    per_row = 4 * (cfg.n_layers * n_pos * cfg.d_model * 48 + n_pos * cfg.d_vocab + 4 * n_columns)
    return int(max(1, min(256, budget // max(per_row, 1))))


def attribute(
    model,
    prompt,
    basis="neurons",
    targets=None,
    *,
    max_feature_nodes: int | None = 4096,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int | None = None,
    memory_budget=None,
    exclude_positions: tuple[int, ...] = (),
    progress: bool = True,
) -> Graph:
    """The attribution graph of ``prompt``'s next token (see the module docstring for the method).

    ``basis``: ``"neurons"`` (the MLPs' own neurons, exact), a :class:`~codecircuits.transcoders.TranscoderSet`, or
    the path of one. ``targets``: see :func:`logit_targets`. ``max_feature_nodes`` caps the feature nodes (``None``:
    every active feature). ``batch_size`` rows go through each backward pass; by default as many as
    ``memory_budget`` allows (bytes or ``"2GB"``; 2 GiB by default). ``exclude_positions`` get no feature nodes
    (their MLP outputs are all error), as circuit-tracer does for the BOS position.

    ``prompt`` is a string, or token ids ``[1, pos]`` (to control BOS yourself)."""
    t0 = time.perf_counter()
    basis = as_basis(basis)
    basis.check(model)
    tokens = to_tokens(model, prompt)
    if tokens.shape[0] != 1:
        raise InputError("attribute() builds the graph of one prompt; give a single string")
    n_pos = tokens.shape[1]
    last_logits, cache, acts, feats = _prompt_state(model, tokens, basis, exclude_positions)
    tg = logit_targets(model, last_logits, targets, max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob)
    n_active = len(feats)
    capped = max_feature_nodes is not None and n_active > max_feature_nodes
    n_nodes = (max_feature_nodes if capped else n_active) + (model.cfg.n_layers + 1) * n_pos + len(tg.names)
    if 4 * n_nodes**2 > 4 * parse_budget(memory_budget, default=DEFAULT_MEMORY_BUDGET):
        raise InputError(
            f"the graph would have {n_nodes:,} nodes ({n_active:,} active features), and its adjacency matrix "
            f"{4 * n_nodes**2 / 2**30:.1f} GiB, over four times the memory budget: cap the feature nodes "
            "(max_feature_nodes=4096) or raise memory_budget"
        )
    batch = batch_size or default_batch(model, n_pos, n_active if capped else min(n_active, max_feature_nodes or n_active), memory_budget)
    run = FrozenRun(model, tokens, basis, batch)
    emb = cache["blocks.0.hook_resid_pre"][0].to(work_dtype(model))
    keep = torch.ones(n_active, dtype=torch.bool)
    n_rows = len(tg.names) + (2 * max_feature_nodes if capped else n_active)
    with progress_bar(n_rows + (len(tg.names) if capped else 0), "attribution rows", progress) as bar:
        if capped:
            keep = _select(run, model, basis, cache, feats, tg, _errors(model, basis, cache, acts, feats, keep), emb, max_feature_nodes, bar)
        errors = _errors(model, basis, cache, acts, feats, keep)
        chosen = feats.subset(keep)
        columns = Columns(model, basis, chosen, errors, emb)
        rows = _rows(run, model, basis, cache, chosen, tg, columns, torch.arange(len(chosen)), True, bar)
    n_feat, n_err, n_logit = len(chosen), errors.shape[0] * n_pos, len(tg.names)
    N = n_feat + n_err + n_pos + n_logit
    adjacency = torch.zeros(N, N, dtype=rows.dtype)
    adjacency[N - n_logit :, : columns.n] = rows[:n_logit]
    adjacency[:n_feat, : columns.n] = rows[n_logit:]
    dropped = feats.subset(~keep)
    elapsed = time.perf_counter() - t0
    del run
    return Graph(
        adjacency=adjacency,
        feature_layer=chosen.layer, feature_pos=chosen.pos, feature_index=chosen.index,
        activations=chosen.value, gains=chosen.gain, feature_inputs=chosen.input,
        encoders=_node_encoders(model, basis, cache, chosen).to(rows.dtype),
        logit_inputs=tg.directions.to(rows.dtype) @ last_logits.to(rows.dtype),
        tokens=tokens[0].tolist(), token_strings=token_texts(model.tokenizer, tokens[0].tolist()),
        prompt=prompt if isinstance(prompt, str) else "".join(token_texts(model.tokenizer, tokens[0].tolist())),
        target_names=tg.names, target_ids=tg.token_ids, target_directions=tg.directions,
        target_weights=tg.weights, target_probabilities=tg.probabilities,
        n_layers=model.cfg.n_layers,
        error_norms=errors.norm(dim=-1),
        meta={
            **basis.describe(),
            "model": getattr(model.cfg, "model_name", ""),
            "n_active": n_active,
            "n_features": n_feat,
            "max_feature_nodes": max_feature_nodes,
            "left_out_activation_share": float(dropped.value.abs().sum() / feats.value.abs().sum().clamp_min(1e-12)),
            "batch_size": batch,
            "seconds": elapsed,
        },
    )
