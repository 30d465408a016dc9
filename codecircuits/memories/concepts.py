"""Code concepts as regular expressions, concept scores of FF keys, and concept editing by masking keys.

A :class:`Concept` (defined with the catalogues in :mod:`codecircuits.memories.catalogues`, re-exported here) is
a regular expression over source text, of one of two kinds (Haider et al. 2024):
**shallow** (keywords, n-grams, indentation, punctuation, strings, comments, numbers) or **semantic** (API
families such as ``os``, ``re``, ``json``, ``typing``, ``collections``; exception handling; file input/output;
arithmetic; loops and comprehensions; async code). Its **scope** says which text around a token counts:

- ``"token"``: the token's own characters overlap a match (a token inside a string, an indentation token);
- ``"line"``:  a match overlaps the token's line up to and including the token (a token on an ``except`` line).

A trigger example *matches* a concept when its trigger token (the last token of the prefix) does, under the
concept's scope. A key's **score** for a concept is the share of its filled top-K trigger examples that match;
the concept's **base rate** is the share of all scanned tokens that match, and ``lift = score / base rate``.
A key is labelled with the concept of highest lift among those with ``score >= tau`` and ``lift >= min_lift``
(the most specific description that covers most of its triggers); otherwise it is unlabelled.

Concept editing (RQ2) zeroes the selected keys' coefficients at every position (``hook_post[..., keys] = 0``)
and compares next-token accuracy and loss on the concept's tokens (target tokens that overlap a match of the
regex) with the same on all other tokens, next to a control that zeroes as many random keys in each layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import figures
from ..core.batching import pad_id
from ..core.interventions import Zero, hook
from ..core.sites import hook_name
from ..errors import InputError
from .catalogues import CATALOGUE, CODE, KINDS, REGIONS, SCOPES, Concept, catalogue, get
from .chunks import ChunkedCorpus, chunk_corpus
from .languages import REGION_GRAMMARS, check_language, language_of
from .triggers import TriggerScan


def resolve_concepts(concepts, language: str = "python") -> tuple[Concept, ...]:
    """The concepts ``concepts`` names: ``None`` for ``language``'s whole catalogue, else a non-empty list of
    :class:`Concept` objects or catalogue names (unique names), with an error for anything else."""
    if concepts is None:
        return catalogue(language=language)
    cat = catalogue(language=language)
    out = tuple(get(c, cat) if isinstance(c, str) else c for c in concepts)
    if not out or not all(isinstance(c, Concept) for c in out):
        raise InputError("concepts must be a non-empty list of Concept objects or catalogue names.")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise InputError(f"Concept names must be unique; got {names}.")
    return out


# ------------------------------------------------------------------------------------------------------------
# token masks


def _spans(c: Concept, text: str, region: dict[str, np.ndarray]):
    """Non-empty matches of ``c`` that do not start in a skipped region; after a skipped start the search goes
    on from the next character (so the ``#`` of a real comment after a ``'#'`` string is still found)."""
    rx, pos = c.regex, 0
    while pos <= len(text):
        m = rx.search(text, pos)
        if m is None:
            return
        a, b = m.span()
        if any(region[r][a] for r in c.skip):
            pos = a + 1
            continue
        if b > a:
            yield a, b
        pos = max(b, a + 1)


def doc_masks(
    text: str, offsets: np.ndarray, concepts: Sequence[Concept], *, force_token: bool, language: str = "python"
) -> np.ndarray:
    """``[concept, token]``: does each token match each concept (under its scope, or token scope if forced).
    The text is read as ``language``: its strings and comments are that language's, and a concept of another
    language matches nothing."""
    n = len(text)
    s = np.clip(offsets[:, 0], 0, n)
    e = np.clip(np.maximum(offsets[:, 1], offsets[:, 0] + 1), 0, n)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    after_nl = np.zeros(n + 1, dtype=np.int64)
    after_nl[1:] = np.where(codes == 10, np.arange(1, n + 1), 0)
    line_start = np.maximum.accumulate(after_nl)[s]
    region = {r: np.zeros(n + 1, dtype=bool) for r in REGIONS}
    if any(c.skip for c in concepts):
        for m in REGION_GRAMMARS[check_language(language)].finditer(text):
            region[m.lastgroup][m.start() : m.end()] = True
    out = np.zeros((len(concepts), len(offsets)), dtype=bool)
    for ci, c in enumerate(concepts):
        if c.language != language:
            continue
        diff = np.zeros(n + 1, dtype=np.int64)
        for a, b in _spans(c, text, region):
            diff[a] += 1
            diff[b] -= 1
        covered = np.cumsum(diff)[:n] > 0
        csum = np.concatenate([[0], np.cumsum(covered)])
        lo = s if (force_token or c.scope == "token") else line_start
        out[ci] = (csum[e] - csum[lo]) > 0
    return out


@dataclass(frozen=True)
class ConceptMasks:
    """``mask[concept, flat_token]`` over the concatenated tokens of a chunked corpus's documents."""

    concepts: tuple[Concept, ...]
    mask: torch.Tensor  # bool [concept, flat token]
    doc_start: np.ndarray  # flat index of each document's first token
    axes: tuple[str, ...] = ("concept", "token")

    def flat(self, doc: np.ndarray | torch.Tensor, pos: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.doc_start)[torch.as_tensor(doc)] + torch.as_tensor(pos)


def token_masks(chunked: ChunkedCorpus, concepts=None, *, force_token: bool = False) -> ConceptMasks:
    """Which tokens of every document match which concept (``force_token`` ignores line scopes). Each document is
    read in the language of its file name (:func:`~codecircuits.memories.languages.language_of`; Python for
    names without a known extension); ``concepts=None`` is the catalogue of the corpus's main language."""
    from .languages import corpus_language

    cs = resolve_concepts(concepts, corpus_language(chunked.names))
    starts, total = chunked.flat_index()
    used = set(np.unique(chunked.chunk_doc).tolist())
    mask = np.zeros((len(cs), total), dtype=bool)
    for d in used:
        a = starts[d]
        mask[:, a : a + len(chunked.ids[d])] = doc_masks(
            chunked.texts[d], chunked.offsets[d], cs, force_token=force_token, language=language_of(chunked.names[d])
        )
    return ConceptMasks(concepts=cs, mask=torch.from_numpy(mask), doc_start=starts)


def chunk_flat_tokens(chunked: ChunkedCorpus, n_chunks: int | None = None) -> torch.Tensor:
    """Flat indices (into the concatenation of every document's tokens, :meth:`ChunkedCorpus.flat_index`) of the
    document tokens of the first ``n_chunks`` chunks (all when ``None``), in chunk order."""
    starts, _ = chunked.flat_index()
    n = len(chunked) if n_chunks is None else n_chunks
    parts = [
        np.arange(len(chunked.chunk_ids(c))) + int(chunked.chunk_start[c]) + starts[int(chunked.chunk_doc[c])]
        for c in range(n)
    ]
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)


# ------------------------------------------------------------------------------------------------------------
# key scores


@dataclass(frozen=True)
class ConceptScores:
    """Per concept and key, the share of the key's trigger examples that match (``[concept, layer, neuron]``)."""

    scores: torch.Tensor  # float [concept, layer, neuron]
    base_rate: torch.Tensor  # float [concept]
    concepts: tuple[Concept, ...]
    layers: tuple[int, ...]
    n_triggers: torch.Tensor  # int [layer, neuron]: filled trigger examples per key
    axes: tuple[str, ...] = ("concept", "layer", "neuron")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def _ci(self, concept) -> int:
        name = concept.name if isinstance(concept, Concept) else concept
        if name not in self.names:
            raise InputError(f"No concept {name!r} in these scores; known: {', '.join(self.names)}.")
        return self.names.index(name)

    def lift(self) -> torch.Tensor:
        return self.scores / self.base_rate.clamp(min=1e-9).view(-1, 1, 1)

    def labels(self, *, tau: float = 0.5, min_lift: float = 2.0) -> torch.Tensor:
        """``[layer, neuron]``: index of each key's concept (see the module docstring), -1 if unlabelled."""
        lift = self.lift()
        ok = (self.scores >= tau) & (lift >= min_lift) & (self.n_triggers > 0).unsqueeze(0)
        best = lift.masked_fill(~ok, -1.0).argmax(0)
        return torch.where(ok.any(0), best, torch.full_like(best, -1))

    def layer_distribution(self, *, tau: float = 0.5, min_lift: float = 2.0) -> pd.DataFrame:
        """Per layer: keys labelled shallow, semantic or not at all, and the semantic share of labelled keys."""
        lab = self.labels(tau=tau, min_lift=min_lift)
        kinds = torch.tensor([KINDS.index(c.kind) for c in self.concepts])
        rows = []
        for li, layer in enumerate(self.layers):
            lb = lab[li]
            k = torch.where(lb >= 0, kinds[lb.clamp(min=0)], torch.full_like(lb, -1))
            sh, se = int((k == 0).sum()), int((k == 1).sum())
            rows.append(
                {
                    "layer": layer,
                    "keys": int(lb.numel()),
                    "shallow": sh,
                    "semantic": se,
                    "unlabelled": int((k < 0).sum()),
                    "semantic_share": se / (sh + se) if sh + se else float("nan"),
                }
            )
        return pd.DataFrame(rows)

    def semantic_share_by_depth(
        self, *, tau: float = 0.5, min_lift: float = 2.0, n_resamples: int = 1000, seed: int = 0
    ) -> dict:
        """Per third of the layers (``early``, ``middle``, ``late``), the semantic share of its labelled keys with
        a 95% bootstrap interval that resamples those keys (:class:`codecircuits.intervals.Interval`; ``n`` is the
        number of labelled keys, and the estimate is NaN where a third has none)."""
        from ..intervals import Interval, mean

        lab = self.labels(tau=tau, min_lift=min_lift)
        kinds = torch.tensor([KINDS.index(c.kind) for c in self.concepts])
        n = len(self.layers)
        parts = {"early": (0, n // 3), "middle": (n // 3, n - n // 3), "late": (n - n // 3, n)}
        out = {}
        for name, (a, b) in parts.items():
            lb = lab[a:b].flatten()
            lb = lb[lb >= 0]
            sem = (kinds[lb] == KINDS.index("semantic")).double()
            out[name] = (
                mean(sem, n_resamples=n_resamples, seed=seed)
                if len(sem)
                else Interval(float("nan"), float("nan"), float("nan"), 0)
            )
        return out

    def keys(
        self, concept, *, tau: float = 0.5, min_lift: float = 2.0, max_keys: int | None = None
    ) -> dict[int, list[int]]:
        """The keys selected for ``concept``: score >= tau and lift >= min_lift, strongest first, at most ``max_keys``."""
        ci = self._ci(concept)
        s = self.scores[ci]
        ok = (s >= tau) & (self.lift()[ci] >= min_lift) & (self.n_triggers > 0)
        li, ni = ok.nonzero(as_tuple=True)
        order = torch.argsort(s[li, ni], descending=True, stable=True)
        if max_keys is not None:
            order = order[:max_keys]
        out: dict[int, list[int]] = {}
        for i in order.tolist():
            out.setdefault(self.layers[int(li[i])], []).append(int(ni[i]))
        return {layer: sorted(v) for layer, v in sorted(out.items())}

    def to_dataframe(self) -> pd.DataFrame:
        """Per concept: its kind, base rate, and keys above 0.5 / labelled with it, with the mean labelled layer."""
        lab = self.labels()
        layers = torch.tensor(self.layers).view(-1, 1).expand_as(lab)
        rows = []
        for ci, c in enumerate(self.concepts):
            sel = lab == ci
            rows.append(
                {
                    "concept": c.name,
                    "kind": c.kind,
                    "base_rate": float(self.base_rate[ci]),
                    "keys_score_ge_0.5": int((self.scores[ci] >= 0.5).sum()),
                    "keys_labelled": int(sel.sum()),
                    "mean_layer": float(layers[sel].float().mean()) if sel.any() else float("nan"),
                    "max_score": float(self.scores[ci].max()),
                }
            )
        return pd.DataFrame(rows)

    def top(self, k: int = 10, concept=None) -> pd.DataFrame:
        """The ``k`` keys with the highest score (the share of their trigger examples that match; for ``concept``, or
        for any concept), largest first, one row per concept and key (:meth:`to_dataframe` summarises each
        concept)."""
        sc = self.scores if concept is None else self.scores[self._ci(concept)].unsqueeze(0)
        flat = sc.flatten()
        idx = torch.sort(flat, descending=True, stable=True).indices[: min(k, flat.numel())]
        L, N = sc.shape[1], sc.shape[2]
        ci, rest = idx // (L * N), idx % (L * N)
        li, ni = rest // N, rest % N
        names = self.names if concept is None else [self.names[self._ci(concept)]]
        return pd.DataFrame(
            {
                "concept": [names[int(c)] for c in ci],
                "layer": [self.layers[int(i)] for i in li],
                "neuron": ni.tolist(),
                "score": flat[idx].tolist(),
            }
        )

    def plot(self, k: int = 20, concept=None) -> figures.Figure:
        """The top ``k`` keys (:meth:`top`, for ``concept`` or any) as bars of their score."""
        df = self.top(k, concept)
        df["key"] = [f"L{a}N{b} {c}" for a, b, c in zip(df.layer, df.neuron, df.concept)]
        return figures.top_bars(df, "score", label="key", title=f"concept scores: top {k} keys")


def key_scores(scan: TriggerScan, chunked: ChunkedCorpus, concepts=None) -> ConceptScores:
    """Score every scanned key against every concept (vectorised over keys and trigger examples)."""
    scan.check_corpus(chunked)
    masks = token_masks(chunked, concepts)
    filled = scan.chunk >= 0  # [L, N, K]
    doc = scan.chunk_doc[scan.chunk.clamp(min=0)]
    flat = masks.flat(doc, scan.pos.clamp(min=0))
    n = filled.sum(-1)  # [L, N]
    scores = []
    for ci in range(len(masks.concepts)):
        hit = masks.mask[ci][flat] & filled
        scores.append(hit.sum(-1).float() / n.clamp(min=1))
    scanned = chunk_flat_tokens(chunked, scan.chunks_done)
    base = masks.mask[:, scanned].float().mean(-1) if len(scanned) else torch.zeros(len(masks.concepts))
    return ConceptScores(
        scores=torch.stack(scores), base_rate=base, concepts=masks.concepts, layers=scan.layers, n_triggers=n
    )


# ------------------------------------------------------------------------------------------------------------
# masking keys


def mask_hooks(model, keys: dict[int, Sequence[int]]) -> list:
    """Forward hooks that zero the coefficients of ``keys`` (``{layer: [neuron, ...]}``) at every position."""
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    hooks = []
    for layer, ns in sorted(keys.items()):
        if not 0 <= int(layer) < n_layers:
            raise InputError(f"Layer {layer} does not exist; the model has layers 0..{n_layers - 1}.")
        idx = torch.as_tensor(sorted(set(int(n) for n in ns)), dtype=torch.long)
        if len(idx) and (idx.min() < 0 or idx.max() >= d_mlp):
            raise InputError(f"Neurons of layer {layer} must be in [0, {d_mlp}); got {idx.tolist()}.")
        keep = torch.zeros(d_mlp, dtype=torch.bool)
        keep[idx] = True  # [d_mlp]: broadcast over batch and positions
        hooks.append(hook(hook_name("post", int(layer)), Zero(), keep.to(model.cfg.device)))
    return hooks


def random_keys(
    model,
    keys: dict[int, Sequence[int]],
    *,
    seed: int = 0,
    exclude_selected: bool = True,
    match=None,
    neighbours: int = 10,
) -> dict[int, list[int]]:
    """As many random keys per layer as ``keys`` has (drawn from the layer's other keys), reproducibly.

    ``match`` (a scan's :class:`~codecircuits.memories.triggers.ActivationStats`) matches the draw on activation
    magnitude: each selected key is paired with one of the ``neighbours`` other keys of its layer whose activation
    RMS is nearest its own (log scale, drawn without replacement), so the control removes as much activation mass
    as the selection and differs from it only in *which* keys are masked.
    """
    g = torch.Generator().manual_seed(seed)
    d_mlp = int(model.cfg.d_mlp)
    if neighbours < 1:
        raise InputError(f"neighbours must be at least 1; got {neighbours}.")
    out = {}
    for layer, ns in sorted(keys.items()):
        pool = torch.ones(d_mlp, dtype=torch.bool)
        if exclude_selected:
            pool[torch.as_tensor(list(ns), dtype=torch.long)] = False
        cand = pool.nonzero().flatten()
        if len(ns) > len(cand):
            raise InputError(f"Layer {layer}: cannot draw {len(ns)} random keys from {len(cand)} others.")
        if match is None:
            out[layer] = sorted(cand[torch.randperm(len(cand), generator=g)[: len(ns)]].tolist())
            continue
        if int(layer) not in match.layers:
            raise InputError(
                f"Layer {layer} has no activation statistics (the scan covered layers {list(match.layers)}); "
                "scan that layer or draw the control without match=."
            )
        rms = match.rms[match.layers.index(int(layer))].double().clamp(min=1e-12).log()
        free = torch.ones(len(cand), dtype=torch.bool)
        chosen = []
        for n in torch.as_tensor(list(ns), dtype=torch.long)[torch.randperm(len(ns), generator=g)]:
            gap = (rms[cand] - rms[n]).abs().masked_fill(~free, float("inf"))
            near = gap.topk(min(neighbours, int(free.sum())), largest=False).indices
            pick = near[torch.randint(len(near), (1,), generator=g)].item()
            free[pick] = False
            chosen.append(int(cand[pick]))
        out[layer] = sorted(chosen)
    return out


@dataclass(frozen=True)
class TokenEval:
    """Per target token of a chunked corpus: next-token loss and whether the top-1 was right (``[token]``)."""

    loss: torch.Tensor  # float [token]
    correct: torch.Tensor  # bool [token]
    target: torch.Tensor  # int64 [token]: flat index of each target token in the corpus
    axes: tuple[str, ...] = ("token",)
    #: int64 [token]: flat index of the input token the prediction is made at (-1 where it is the BOS)
    source: torch.Tensor | None = None

    def summary(self, select: torch.Tensor | None = None) -> dict[str, float]:
        sel = torch.ones_like(self.correct) if select is None else select
        n = int(sel.sum())
        return {
            "accuracy": float(self.correct[sel].float().mean()) if n else float("nan"),
            "loss": float(self.loss[sel].mean()) if n else float("nan"),
            "tokens": n,
        }


def evaluate(
    model, chunked: ChunkedCorpus, *, hooks: Sequence = (), batch_size: int = 8, progress: bool = False
) -> TokenEval:
    """Next-token loss and top-1 correctness at every document token of every chunk, with ``hooks`` applied."""
    pad = pad_id(model)
    starts, _ = chunked.flat_index()
    losses, corrects, targets, sources = [], [], [], []
    first = 0 if chunked.bos is None else 1
    with torch.no_grad():
        for a in tqdm(range(0, len(chunked), batch_size), desc="eval", disable=not progress):
            ids = list(range(a, min(a + batch_size, len(chunked))))
            toks, mask = chunked.batch(ids, pad)
            logits = model.run_with_hooks(toks.to(model.cfg.device), fwd_hooks=list(hooks)).float().cpu()
            lp = logits[:, :-1].log_softmax(-1)
            tgt = toks[:, 1:]
            valid = mask[:, 1:].clone()
            nll = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            corr = lp.argmax(-1) == tgt
            pos = torch.arange(1, toks.shape[1]).unsqueeze(0) - first  # document index of each target
            flat = (
                torch.as_tensor(starts)[torch.as_tensor(chunked.chunk_doc[ids])].unsqueeze(1)
                + torch.as_tensor(chunked.chunk_start[ids]).unsqueeze(1)
                + pos
            )
            src = torch.where(pos >= 1, flat - 1, torch.full_like(flat, -1))  # the input token, -1 at BOS
            losses.append(nll[valid])
            corrects.append(corr[valid])
            targets.append(flat[valid])
            sources.append(src.expand_as(flat)[valid])
    return TokenEval(
        loss=torch.cat(losses), correct=torch.cat(corrects), target=torch.cat(targets), source=torch.cat(sources)
    )


@dataclass(frozen=True)
class ConceptEdit:
    """Concept vs general next-token performance before and after masking a concept's keys, with a control."""

    concept: Concept
    keys: dict[int, list[int]]
    controls: tuple[dict[int, list[int]], ...]
    rows: tuple[dict, ...] = field(default_factory=tuple)  # one per condition
    #: accuracy drops with 95% bootstrap intervals over the evaluation tokens (see :func:`edit_concept`)
    intervals: dict = field(default_factory=dict)
    #: per control draw: its accuracy drops on concept and general tokens
    control_draws: tuple[dict, ...] = field(default_factory=tuple)
    #: mean activation RMS of the masked keys and of each control draw's keys (when matched on magnitude)
    magnitude: dict = field(default_factory=dict)

    @property
    def n_keys(self) -> int:
        return sum(len(v) for v in self.keys.values())

    def to_dataframe(self) -> pd.DataFrame:
        """One row per condition (baseline, concept keys masked, random keys masked), with the accuracy drop from
        the baseline on concept and on general tokens (``concept_drop``, ``general_drop``)."""
        df = pd.DataFrame(list(self.rows))
        if len(df) and "condition" in df and (df["condition"] == "baseline").any():
            base = df[df["condition"] == "baseline"].iloc[0]
            df["concept_drop"] = base["concept_accuracy"] - df["concept_accuracy"]
            df["general_drop"] = base["general_accuracy"] - df["general_accuracy"]
        return df

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` conditions that lower accuracy on the concept's tokens most: the rows of :meth:`to_dataframe`
        with the largest signed ``concept_drop`` first (a stable sort; the table itself is in condition order)."""
        df = self.to_dataframe()
        return (df.sort_values("concept_drop", ascending=False, kind="stable") if "concept_drop" in df else df).head(k)

    def plot(self) -> figures.Figure:
        """The accuracy drop on concept and on general tokens for each masking condition, as bars."""
        df = self.to_dataframe()
        if "concept_drop" not in df:
            raise InputError("This edit has no baseline row to measure a drop from: nothing to plot.")
        df = df[df["condition"] != "baseline"]
        labels = [f"{c}: {on} tokens" for c in df["condition"] for on in ("concept", "general")]
        values = [v for a, b in zip(df["concept_drop"], df["general_drop"]) for v in (a, b)]
        return figures.bars(labels, values, title=f"masking the keys of {self.concept.name}",
                            value_title="accuracy drop")

    def drops(self) -> dict[str, float]:
        """Accuracy drops (baseline − condition) on concept and general tokens, for the concept mask and control."""
        d = {r["condition"]: r for r in self.rows}
        base, cm, rc = d["baseline"], d["concept keys masked"], d["random keys masked"]
        return {
            "concept_drop": base["concept_accuracy"] - cm["concept_accuracy"],
            "general_drop": base["general_accuracy"] - cm["general_accuracy"],
            "control_concept_drop": base["concept_accuracy"] - rc["concept_accuracy"],
            "control_general_drop": base["general_accuracy"] - rc["general_accuracy"],
            "concept_loss_rise": cm["concept_loss"] - base["concept_loss"],
            "control_concept_loss_rise": rc["concept_loss"] - base["concept_loss"],
        }


def _row(condition: str, n_keys: int, ev: TokenEval, sel: torch.Tensor) -> dict:
    c, g = ev.summary(sel), ev.summary(~sel)
    return {
        "condition": condition,
        "keys": n_keys,
        "concept_accuracy": c["accuracy"],
        "concept_loss": c["loss"],
        "concept_tokens": c["tokens"],
        "general_accuracy": g["accuracy"],
        "general_loss": g["loss"],
        "general_tokens": g["tokens"],
    }


def _mean_eval(evs: Sequence[TokenEval]) -> TokenEval:
    return TokenEval(loss=torch.stack([e.loss for e in evs]).mean(0),
                     correct=torch.stack([e.correct.float() for e in evs]).mean(0) >= 0.5, target=evs[0].target,
                     source=evs[0].source)


def concept_positions(ev: TokenEval, mask: torch.Tensor, at: str) -> torch.Tensor:
    """Which predictions of ``ev`` are "concept" predictions for a concept's token ``mask`` (``[flat token]``):
    ``at="trigger"``: those made *at* a concept token (its input token is in the concept, as a key's trigger
    example ends in one); ``at="target"``: those *of* a concept token (the predicted token is in the concept)."""
    if at == "target":
        return mask[ev.target]
    if at == "trigger":
        if ev.source is None:
            raise InputError("This evaluation has no input positions; run concepts.evaluate again.")
        return (ev.source >= 0) & mask[ev.source.clamp(min=0)]
    raise InputError(f"at must be 'trigger' or 'target'; got {at!r}.")


def _mean_rms(match, keys: dict[int, Sequence[int]]) -> float:
    vals = [match.rms[match.layers.index(int(layer))][list(ns)] for layer, ns in keys.items() if len(ns)]
    return float(torch.cat(vals).double().mean()) if vals else float("nan")


def edit_concept(
    model,
    scores: ConceptScores,
    concept,
    eval_corpus,
    *,
    keys: dict[int, Sequence[int]] | None = None,
    tau: float = 0.5,
    min_lift: float = 2.0,
    max_keys: int | None = 200,
    n_controls: int = 1,
    match=None,
    seed: int = 0,
    window: int = 128,
    max_tokens: int | None = None,
    batch_size: int = 8,
    baseline: TokenEval | None = None,
    at: str = "target",
    n_resamples: int = 1000,
    progress: bool = False,
) -> ConceptEdit:
    """Mask ``concept``'s keys (selected from ``scores``, or given as ``keys``) and measure the effect.

    Concept predictions are those whose target token overlaps a match of the concept's regex (``at="target"``) or
    those made at such a token (``at="trigger"``: the input token matches the concept under the concept's own
    scope, token or line, exactly as a key's trigger examples are labelled by :func:`key_scores`;
    :func:`concept_positions`); general predictions are all others. The control masks as many random keys per layer (``n_controls`` draws, matched
    on activation magnitude when ``match`` is a scan's :class:`ActivationStats`, see :func:`random_keys`); its row
    averages each token's loss over the draws and counts a token correct when most draws are right, and
    ``control_draws`` keeps each draw's drops. ``intervals`` holds the accuracy drops (baseline − masked, baseline
    − control, control − masked) on concept and general tokens with 95% bootstrap intervals over the evaluation
    tokens, the control taken as each token's share of draws that are right. Pass ``baseline`` (an unmasked
    :func:`evaluate` of the same corpus) to reuse it across concepts.
    """
    from ..intervals import paired

    c = scores.concepts[scores._ci(concept)]
    chunked = chunk_corpus(model, eval_corpus, window=window, max_tokens=max_tokens)
    sel_keys = (
        scores.keys(c, tau=tau, min_lift=min_lift, max_keys=max_keys)
        if keys is None
        else {int(k): sorted(int(n) for n in v) for k, v in keys.items()}
    )
    n_keys = sum(len(v) for v in sel_keys.values())
    cmask = token_masks(chunked, [c], force_token=at == "target").mask[0]  # "trigger": the scope keys are labelled in
    base = baseline if baseline is not None else evaluate(model, chunked, batch_size=batch_size, progress=progress)
    sel = concept_positions(base, cmask, at)
    rows = [_row("baseline", 0, base, sel)]
    if n_controls < 1:
        raise InputError(f"n_controls must be at least 1; got {n_controls}.")
    controls = tuple(random_keys(model, sel_keys, seed=seed + i, match=match) for i in range(n_controls))
    masked = evaluate(model, chunked, hooks=mask_hooks(model, sel_keys), batch_size=batch_size, progress=progress)
    ctrl_evs = [
        evaluate(model, chunked, hooks=mask_hooks(model, r), batch_size=batch_size, progress=progress)
        for r in controls
    ]
    ctrl = _mean_eval(ctrl_evs)
    rows.append(_row("concept keys masked", n_keys, masked, sel))
    rows.append(_row("random keys masked", n_keys, ctrl, sel))
    b0 = _row("baseline", 0, base, sel)
    draws = tuple(
        {
            "draw": i,
            "concept_drop": b0["concept_accuracy"] - r["concept_accuracy"],
            "general_drop": b0["general_accuracy"] - r["general_accuracy"],
        }
        for i, r in enumerate(_row("draw", n_keys, e, sel) for e in ctrl_evs)
    )
    share = torch.stack([e.correct.double() for e in ctrl_evs]).mean(0)  # per token: share of draws right
    b, m = base.correct.double(), masked.correct.double()
    drop = lambda x, y: (x - y).mean()  # noqa: E731
    ivals = {}
    for name, pick in (("concept", sel), ("general", ~sel)):
        if int(pick.sum()) == 0:
            continue
        ivals[f"{name}_drop"] = paired(drop, b[pick], m[pick], n_resamples=n_resamples, seed=seed)
        ivals[f"control_{name}_drop"] = paired(drop, b[pick], share[pick], n_resamples=n_resamples, seed=seed)
        ivals[f"excess_{name}_drop"] = paired(drop, share[pick], m[pick], n_resamples=n_resamples, seed=seed)
    mag = {}
    if match is not None:
        mag = {"masked_rms": _mean_rms(match, sel_keys), "control_rms": [_mean_rms(match, r) for r in controls]}
    return ConceptEdit(
        concept=c, keys=sel_keys, controls=controls, rows=tuple(rows), intervals=ivals, control_draws=draws,
        magnitude=mag,
    )


def edit_table(edits: Sequence[ConceptEdit]) -> pd.DataFrame:
    """One row per concept: keys masked, and accuracy / loss on concept and general tokens per condition."""
    rows = []
    for e in edits:
        d = {r["condition"]: r for r in e.rows}
        b, m, r = d["baseline"], d["concept keys masked"], d["random keys masked"]
        rows.append(
            {
                "concept": e.concept.name,
                "kind": e.concept.kind,
                "keys": e.n_keys,
                "concept_tokens": b["concept_tokens"],
                "concept_acc": b["concept_accuracy"],
                "concept_acc_masked": m["concept_accuracy"],
                "concept_acc_control": r["concept_accuracy"],
                "general_acc": b["general_accuracy"],
                "general_acc_masked": m["general_accuracy"],
                "general_acc_control": r["general_accuracy"],
                "concept_loss": b["concept_loss"],
                "concept_loss_masked": m["concept_loss"],
                "concept_loss_control": r["concept_loss"],
                "general_loss": b["general_loss"],
                "general_loss_masked": m["general_loss"],
                "general_loss_control": r["general_loss"],
            }
        )
    return pd.DataFrame(rows)


def edit_interval_table(edits: Sequence[ConceptEdit]) -> pd.DataFrame:
    """One row per masked concept: its accuracy drops on concept and general tokens, the random-key control's,
    and the excess over the control, each with its 95% bootstrap interval; the masked and control keys' RMS."""
    rows = []
    for e in edits:
        row = {"concept": e.concept.name, "kind": e.concept.kind, "keys": e.n_keys}
        for k in ("concept_drop", "control_concept_drop", "excess_concept_drop", "general_drop"):
            iv = e.intervals.get(k)
            row[k] = iv.format(3) if iv is not None else ""
        if e.magnitude:
            row["masked_rms"] = e.magnitude["masked_rms"]
            row["control_rms"] = float(np.mean(e.magnitude["control_rms"]))
        rows.append(row)
    return pd.DataFrame(rows)


def showcase_keys(scores: ConceptScores, n: int = 6, *, tau: float = 0.5, min_lift: float = 2.0) -> list[tuple]:
    """Keys worth showing, ``[(concept, layer, neuron, score)]``: the best-scoring labelled key of each of the
    concepts with most labelled keys, alternating shallow and semantic."""
    lab = scores.labels(tau=tau, min_lift=min_lift)
    counts = [(int((lab == ci).sum()), ci) for ci in range(len(scores.concepts))]
    by_kind = {
        k: [ci for cnt, ci in sorted(counts, reverse=True) if cnt and scores.concepts[ci].kind == k] for k in KINDS
    }
    order = [c for pair in zip(by_kind["shallow"] + [None] * n, by_kind["semantic"] + [None] * n) for c in pair]
    out = []
    for ci in [c for c in order if c is not None][:n]:
        s = scores.scores[ci].masked_fill(lab != ci, -1)
        li, ni = divmod(int(s.argmax()), s.shape[1])
        out.append((scores.concepts[ci], scores.layers[li], ni, float(scores.scores[ci, li, ni])))
    return out


def pick_edit_concepts(
    scores: ConceptScores,
    eval_masks: torch.Tensor,
    n_per_kind: int,
    *,
    tau: float,
    min_lift: float,
    min_tokens: int = 20,
    min_keys: int = 10,
    fallback_taus: tuple[float, ...] = (0.3, 0.2, 0.1),
) -> list[tuple[str, float]]:
    """Concepts to edit, as ``(name, tau)``: per kind, those with most selected keys among concepts that match at
    least ``min_tokens`` of the evaluation tokens (``eval_masks[concept, token]``).

    A kind whose concepts have fewer than ``min_keys`` keys at ``tau`` (semantic concepts, on small models) is
    picked at the first of ``fallback_taus`` that gives them as many, so both kinds are masked; the tau each edit
    used is returned with it (and reported)."""
    out = []
    for kind in KINDS:
        for t in (tau, *[x for x in fallback_taus if x < tau]):
            cands = []
            for ci, c in enumerate(scores.concepts):
                if c.kind != kind or int(eval_masks[ci].sum()) < min_tokens:
                    continue
                n = sum(len(v) for v in scores.keys(c, tau=t, min_lift=min_lift).values())
                if n >= min_keys:
                    cands.append((-n, ci))
            if cands:
                out += [(scores.concepts[ci].name, t) for _, ci in sorted(cands)[:n_per_kind]]
                break
    return out


__all__ = [
    "CATALOGUE",
    "CODE",
    "KINDS",
    "REGIONS",
    "SCOPES",
    "Concept",
    "ConceptEdit",
    "ConceptMasks",
    "ConceptScores",
    "TokenEval",
    "catalogue",
    "chunk_flat_tokens",
    "concept_positions",
    "doc_masks",
    "edit_concept",
    "edit_interval_table",
    "edit_table",
    "evaluate",
    "get",
    "key_scores",
    "mask_hooks",
    "pick_edit_concepts",
    "random_keys",
    "resolve_concepts",
    "showcase_keys",
    "token_masks",
]
