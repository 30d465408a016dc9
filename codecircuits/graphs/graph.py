"""An attribution graph as plain data, with circuit-tracer's pruning and scores and its node-link JSON.

Node order (circuit-tracer's): ``n_features`` feature nodes, ``n_layers × n_pos`` error nodes (layer-major), ``n_pos``
token nodes, ``n_logits`` logit nodes. ``adjacency[t, s]`` is the direct effect of source ``s`` on target ``t``'s
input (:mod:`.attribute`); rows of error and token nodes are zero.

**Influence** (circuit-tracer's ``graph.py``): with ``Â = |A|`` normalised to rows summing to 1 and ``w`` the logit
targets' weights, a node's influence on the logits is ``(w Â + w Â² + …)``, finite because the graph has no
cycles. **Pruning** keeps the nodes that cover ``node_threshold`` of the total influence (tokens and logits
always), then the edges whose influence (``Â[t, s]`` times the influence of ``t`` plus its logit weight) covers
``edge_threshold``, then drops, until nothing changes, feature and error nodes left without an outgoing edge and
feature nodes left without an incoming one.

**Scores**: the *replacement score* is the share of the influence on the logits that starts at tokens rather than
at error nodes, ``Σ_tokens I / (Σ_tokens I + Σ_errors I)``; the *completeness score* is the influence-weighted mean,
over nodes, of the share of each node's (normalised) inputs that come from non-error nodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import InputError


def normalise_rows(matrix: torch.Tensor) -> torch.Tensor:
    """``|matrix|`` with each row divided by its sum (rows of zeros stay zero)."""
    m = matrix.abs()
    return m / m.sum(dim=1, keepdim=True).clamp_min(1e-10)


def influence(normalised: torch.Tensor, weights: torch.Tensor, max_steps: int = 10_000) -> torch.Tensor:
    """``w Â + w Â² + …`` for an acyclic ``Â`` (rows: targets); an error if the series does not end."""
    current = weights @ normalised
    total = current.clone()
    for _ in range(max_steps):
        if not current.any():
            return total
        current = current @ normalised
        total += current
    raise InputError("the graph's influence does not converge: the adjacency has a cycle")


def cover_threshold(scores: torch.Tensor, share: float) -> float:
    """The smallest score among the largest scores that together cover ``share`` of the total."""
    ordered = scores.flatten().sort(descending=True).values
    if ordered.numel() == 0 or float(ordered.sum()) <= 0:
        return float("inf")
    cumulative = ordered.cumsum(0) / ordered.sum()
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), len(ordered) - 1)
    return float(ordered[index])


@dataclass
class GraphScores:
    """A graph's replacement and completeness scores (see the module docstring)."""

    replacement: float
    completeness: float

    def to_dict(self) -> dict:
        return {"replacement": self.replacement, "completeness": self.completeness}


@dataclass
class Graph:
    """The attribution graph of one prompt (see the module docstring). Build it with
    :func:`codecircuits.graphs.attribute`; :meth:`prune` keeps its important part, :meth:`scores` measures it,
    :meth:`to_json` writes circuit-tracer's node-link JSON, :meth:`show` opens the offline viewer."""

    adjacency: torch.Tensor
    feature_layer: torch.Tensor
    feature_pos: torch.Tensor
    feature_index: torch.Tensor
    activations: torch.Tensor
    gains: torch.Tensor
    feature_inputs: torch.Tensor
    encoders: torch.Tensor  # [n_features, d_model]: each feature node's input direction at its position
    logit_inputs: torch.Tensor
    tokens: list[int]
    token_strings: list[str]
    prompt: str
    target_names: list[str]
    target_ids: list[int]
    target_directions: torch.Tensor
    target_weights: torch.Tensor
    target_probabilities: torch.Tensor
    n_layers: int
    error_norms: torch.Tensor  # [n_layers, n_pos]
    meta: dict = field(default_factory=dict)
    node_mask: torch.Tensor | None = None  # set by prune()
    edge_mask: torch.Tensor | None = None
    labels: dict = field(default_factory=dict)  # feature node index -> label (dashboards)

    # ---- node bookkeeping -------------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.feature_layer)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_logits(self) -> int:
        return len(self.target_names)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def kind(self, node: int) -> str:
        if node < self.error_start:
            return "feature"
        if node < self.token_start:
            return "error"
        return "token" if node < self.logit_start else "logit"

    def node_inputs(self) -> torch.Tensor:
        """Each node's input (features: ``enc · x``; logits: their demeaned direction · logits; NaN for error and
        token nodes, which have no inputs)."""
        out = torch.full((self.n_nodes,), float("nan"), dtype=self.adjacency.dtype)
        out[: self.n_features] = self.feature_inputs
        out[self.logit_start :] = self.logit_inputs
        return out

    def logit_weights(self) -> torch.Tensor:
        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
        w[self.logit_start :] = self.target_weights.to(w.dtype)
        return w

    def node_id(self, node: int) -> str:
        """circuit-tracer's node ids: ``{layer}_{feature}_{pos}``, ``E_{token}_{pos}``, ``{n_layers + 1}_{token}_{pos}``
        (logits; custom directions get circuit-tracer's virtual ids ``d_vocab + i``), except error nodes:
        circuit-tracer names them ``0_{layer}_{pos}``, which is also the id of layer 0's feature ``layer`` at that
        position (its viewer keys nodes by id, so one of the two is lost); ours are ``err_{layer}_{pos}``, and
        viewers tell them by ``feature_type``."""
        kind = self.kind(node)
        if kind == "feature":
            return f"{int(self.feature_layer[node])}_{int(self.feature_index[node])}_{int(self.feature_pos[node])}"
        if kind == "error":
            layer, pos = divmod(node - self.error_start, self.n_pos)
            return f"err_{layer}_{pos}"
        if kind == "token":
            pos = node - self.token_start
            return f"E_{self.tokens[pos]}_{pos}"
        i = node - self.logit_start
        vocab_idx = self.target_ids[i] if self.target_ids[i] >= 0 else self.target_directions.shape[1] + i
        return f"{self.n_layers + 1}_{vocab_idx}_{self.n_pos - 1}"

    def describe(self, node: int) -> str:
        """A readable name: ``L3 #17 @5 "str"``, ``error L3 @5``, ``token "str" @5``, ``logit ")))"``."""
        kind = self.kind(node)
        if kind == "feature":
            p = int(self.feature_pos[node])
            label = self.labels.get(node)
            text = f'L{int(self.feature_layer[node])} #{int(self.feature_index[node])} @{p} "{self.token_strings[p]}"'
            return f"{text} ({label})" if label else text
        if kind == "error":
            layer, pos = divmod(node - self.error_start, self.n_pos)
            return f'error L{layer} @{pos} "{self.token_strings[pos]}"'
        if kind == "token":
            pos = node - self.token_start
            return f'token "{self.token_strings[pos]}" @{pos}'
        return f'logit "{self.target_names[node - self.logit_start]}"'

    # ---- influence, pruning, scores ---------------------------------------------------------------------------
    def influence(self) -> torch.Tensor:
        """Each node's influence on the logit targets (see the module docstring)."""
        return influence(normalise_rows(self.adjacency), self.logit_weights())

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Graph:
        """A copy with ``node_mask`` and ``edge_mask`` set by circuit-tracer's rule (module docstring)."""
        if not (0 < node_threshold <= 1 and 0 < edge_threshold <= 1):
            raise InputError("node_threshold and edge_threshold are shares of influence, in (0, 1]")
        A, w = self.adjacency, self.logit_weights()
        node_inf = influence(normalise_rows(A), w)
        node_mask = node_inf >= cover_threshold(node_inf, node_threshold)
        node_mask[self.token_start :] = True
        pruned = A.clone()
        pruned[~node_mask] = 0
        pruned[:, ~node_mask] = 0
        normalised = normalise_rows(pruned)
        edge_scores = normalised * (influence(normalised, w) + w)[:, None]
        edge_mask = edge_scores >= cover_threshold(edge_scores, edge_threshold)
        edge_mask &= pruned != 0
        sources = slice(0, self.token_start)
        while True:
            before = node_mask.clone()
            edge_mask[~node_mask] = False
            edge_mask[:, ~node_mask] = False
            node_mask[sources] &= edge_mask[:, sources].any(0)
            node_mask[: self.n_features] &= edge_mask[: self.n_features].any(1)
            if torch.equal(before, node_mask):
                break
        return replace(self, node_mask=node_mask, edge_mask=edge_mask)

    def scores(self) -> GraphScores:
        """Replacement and completeness scores, of the pruned graph when :meth:`prune` made this one (its pruned
        edges then count as missing, not as error)."""
        A = self.adjacency if self.edge_mask is None else self.adjacency * self.edge_mask
        normalised = normalise_rows(self.adjacency)
        if self.edge_mask is not None:
            normalised = normalised * self.edge_mask
        w = self.logit_weights()
        node_inf = influence(normalised, w)
        tokens = float(node_inf[self.token_start : self.logit_start].sum())
        errors = float(node_inf[self.error_start : self.token_start].sum())
        replacement = tokens / (tokens + errors) if tokens + errors > 0 else float("nan")
        has_inputs = A.abs().sum(1) > 0
        non_error = 1 - normalised[:, self.error_start : self.token_start].sum(1)
        weight = (node_inf + w) * has_inputs
        completeness = float((non_error * weight).sum() / weight.sum()) if float(weight.sum()) > 0 else float("nan")
        return GraphScores(replacement, completeness)

    # ---- results protocol -------------------------------------------------------------------------------------
    def to_dataframe(self):
        """One row per node: id, kind, layer, position, feature, token, activation, influence, kept (after prune)."""
        import pandas as pd

        inf = self.influence()
        rows = []
        for node in range(self.n_nodes):
            kind = self.kind(node)
            layer = pos = feature = None
            activation = float("nan")
            if kind == "feature":
                layer, pos, feature = int(self.feature_layer[node]), int(self.feature_pos[node]), int(self.feature_index[node])
                activation = float(self.activations[node])
            elif kind == "error":
                layer, pos = divmod(node - self.error_start, self.n_pos)
                activation = float(self.error_norms[layer, pos])
            elif kind == "token":
                pos = node - self.token_start
            else:
                pos = self.n_pos - 1
            rows.append({
                "node": self.node_id(node), "kind": kind, "layer": layer, "pos": pos, "feature": feature,
                "token": self.token_strings[pos] if pos is not None else "", "name": self.describe(node),
                "activation": activation, "influence": float(inf[node]),
                "kept": bool(self.node_mask[node]) if self.node_mask is not None else True,
            })
        return pd.DataFrame(rows)

    def top(self, k: int = 10):
        """The ``k`` feature and error nodes of largest influence on the logits, largest first."""
        frame = self.to_dataframe()
        frame = frame[frame.kind.isin(["feature", "error"])]
        return frame.sort_values("influence", ascending=False).head(k).reset_index(drop=True)

    def plot(self, k: int = 20):
        """Bars of the ``k`` most influential feature and error nodes."""
        from ..figures import top_bars

        return top_bars(self.top(k), "influence", label="name", title=f"Most influential nodes: {self.prompt!r}")

    def show(self, **kwargs):
        """The interactive graph, inline in Jupyter (``.save("g.html")`` writes the offline page)."""
        from .viewer import GraphView

        return GraphView(self, **kwargs)

    # ---- files ------------------------------------------------------------------------------------------------
    def to_json(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, slug: str | None = None) -> dict:
        """circuit-tracer's node-link JSON (``metadata``, ``qParams``, ``nodes``, ``links``), read by its local
        viewer and by Neuronpedia, of the graph pruned at the given thresholds (unless already pruned)."""
        g = self if self.node_mask is not None else self.prune(node_threshold, edge_threshold)
        inf = g.influence()
        inf_share = inf / inf.sum().clamp_min(1e-12)
        order = inf_share.argsort(descending=True)
        cumulative = torch.empty_like(inf_share)
        cumulative[order] = inf_share[order].cumsum(0)
        nodes, ids = [], {}
        for node in g.node_mask.nonzero().flatten().tolist():
            ids[node] = g.node_id(node)
            nodes.append(g._node_json(node, float(cumulative[node])))
        links = [
            {"source": ids[s], "target": ids[t], "weight": float(g.adjacency[t, s])}
            for t, s in g.edge_mask.nonzero().tolist()
            if s in ids and t in ids
        ]
        slug = slug or "".join(c if c.isalnum() else "-" for c in self.prompt)[:48].strip("-") or "graph"
        return {
            "metadata": {
                "slug": slug,
                "scan": self.meta.get("scan", ""),
                "transcoder_list": [],
                "prompt_tokens": self.token_strings,
                "prompt": self.prompt,
                "node_threshold": node_threshold,
                "schema_version": 1,
                "info": {"generator": "codecircuits", **{k: v for k, v in self.meta.items() if isinstance(v, str | int | float | bool | None)}},
            },
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes,
            "links": links,
        }

    def _node_json(self, node: int, cumulative: float) -> dict:
        kind = self.kind(node)
        nid = self.node_id(node)
        base = {"node_id": nid, "jsNodeId": nid, "influence": cumulative, "reverse_ctx_idx": 0, "run_idx": 0,
                "token_prob": 0.0, "is_target_logit": False, "clerp": self.labels.get(node, "")}
        if kind == "feature":
            layer, feat, pos = int(self.feature_layer[node]), int(self.feature_index[node]), int(self.feature_pos[node])
            base.update(feature=(layer + feat) * (layer + feat + 1) // 2 + feat, layer=str(layer), ctx_idx=pos,
                        feature_type="cross layer transcoder", jsNodeId=f"{layer}_{feat}-0", activation=float(self.activations[node]))
        elif kind == "error":
            layer, pos = divmod(node - self.error_start, self.n_pos)
            base.update(feature=-1, layer=str(layer), ctx_idx=pos, feature_type="mlp reconstruction error", jsNodeId=f"{layer}_{pos}-0",
                        activation=float(self.error_norms[layer, pos]))
        elif kind == "token":
            pos = node - self.token_start
            base.update(feature=pos, layer="E", ctx_idx=pos, feature_type="embedding", jsNodeId=f"E_{self.tokens[pos]}-{pos}")
        else:
            i = node - self.logit_start
            vocab_idx = int(nid.split("_")[1])
            p = float(self.target_probabilities[i])
            p = 0.0 if p != p else p
            base.update(feature=vocab_idx, layer=str(self.n_layers + 1), ctx_idx=self.n_pos - 1, feature_type="logit",
                        token_prob=p, is_target_logit=i == 0, jsNodeId=f"L_{vocab_idx}-{self.n_pos - 1}",
                        clerp=f'Output "{self.target_names[i]}" (p={p:.3f})')
        return base

    def save(self, path) -> Path:
        """Write the graph's node-link JSON (``.json``) or the offline viewer page (``.html``)."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_json()), encoding="utf-8")
        elif path.suffix == ".html":
            self.show().save(path)
        else:
            raise InputError(f"Graph.save writes .json or .html, not {path.suffix!r}")
        return path
