"""Layer agreement (Haider et al. 2024, RQ3-RQ4; Geva et al. 2021 §5): when does each layer already say what the
model will finally say, and does that come earlier for short contexts?

At every document token of every chunk, each layer's ``hook_mlp_out`` (the FF layer's summed value vectors,
``sum_k m_k v_k``) and ``hook_resid_post`` (the residual stream after the layer) are read through the
unembedding with the final norm's scale frozen at its value on that position (:mod:`codecircuits.lens`); the
top-1 token of the readout is compared with the model's final top-1 token. ``b_U`` is added to residual
readouts (so the last layer's residual reproduces the logits exactly) and left out of ``mlp_out`` readouts
(a single layer's output is not a full prediction; Geva et al. read ``E · o`` without bias).

The context length of a prediction is the number of document tokens it is made from (its position in the chunk,
BOS not counted); predictions are bucketed by it (``edges``: bucket ``i`` holds ``edges[i] <= length <
edges[i+1]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import figures
from ..core.batching import pad_id
from ..core.sites import LN_FINAL_SCALE, hook_name
from ..errors import InputError
from ..lens import to_logits
from .chunks import chunk_corpus

COMPONENTS = ("mlp_out", "resid_post")  # site kinds of codecircuits.core.sites


@dataclass(frozen=True)
class LayerAgreement:
    """Counts of predictions whose per-layer top-1 equals the final top-1, ``[component, layer, bucket]``."""

    agree: torch.Tensor  # int64 [component, layer, bucket]
    total: torch.Tensor  # int64 [bucket]
    components: tuple[str, ...]
    edges: tuple[int, ...]  # bucket boundaries of context length (len(edges) - 1 buckets)
    model: str
    corpus: str
    axes: tuple[str, ...] = ("component", "layer", "bucket")
    #: balanced runs (:func:`balanced_agreement`): the same counts per document, ``[component, layer, bucket,
    #: document]`` and ``[bucket, document]``, for intervals that resample documents
    doc_agree: torch.Tensor | None = None
    doc_total: torch.Tensor | None = None
    docs: tuple[str, ...] = ()

    @property
    def n_layers(self) -> int:
        return int(self.agree.shape[1])

    def bucket_labels(self) -> list[str]:
        return [f"{a}-{b - 1}" for a, b in zip(self.edges[:-1], self.edges[1:])]

    def _ci(self, component: str) -> int:
        if component not in self.components:
            raise InputError(f"component must be one of {', '.join(self.components)}; got {component!r}.")
        return self.components.index(component)

    def curve(self, component: str = "mlp_out") -> np.ndarray:
        """Agreement per layer over all context lengths, ``[layer]``."""
        a = self.agree[self._ci(component)].sum(-1).double()
        return (a / max(int(self.total.sum()), 1)).numpy()

    def by_bucket(self, component: str = "mlp_out") -> np.ndarray:
        """Agreement per layer and context-length bucket, ``[layer, bucket]`` (NaN for empty buckets)."""
        a = self.agree[self._ci(component)].double()
        t = self.total.double()
        return torch.where(t > 0, a / t.clamp(min=1), torch.full_like(a, float("nan"))).numpy()

    def first_layer(self, component: str = "resid_post", threshold: float = 0.5) -> list[int | None]:
        """Per bucket, the first layer whose agreement reaches ``threshold`` (None if none does)."""
        b = self.by_bucket(component)
        out = []
        for j in range(b.shape[1]):
            hit = np.nonzero(b[:, j] >= threshold)[0]
            out.append(int(hit[0]) if len(hit) else None)
        return out

    def mean_layer(self, component: str = "resid_post") -> list[float]:
        """Per bucket, the expected first layer from which the readout agrees, as a share of depth.

        ``sum_l (1 - agreement[l]) / n_layers``: 0 if every layer already agrees, 1 if none does.
        """
        b = self.by_bucket(component)
        out = (1.0 - b).sum(axis=0) / b.shape[0]
        return [float(x) for x in out]  # NaN for empty buckets

    def late_agreement(self, component: str = "resid_post", frac: float = 0.25) -> list[float]:
        """Per bucket, mean agreement over the last ``frac`` of the layers before the final one (NaN if empty).

        The final layer's residual always agrees, so it is left out: this measures how far the prediction is
        settled just before the end, which is where the depth of resolution shows (RQ4).
        """
        b = self.by_bucket(component)
        n = max(1, int(round((self.n_layers - 1) * frac)))
        return [float(x) for x in b[self.n_layers - 1 - n : self.n_layers - 1].mean(axis=0)]

    def interval(
        self,
        statistic,
        *,
        n_resamples: int = 1000,
        seed: int = 0,
    ):
        """``statistic(agreement)`` with a 95% bootstrap interval that resamples the *documents* (a balanced run
        only): ``statistic`` takes a :class:`LayerAgreement` and returns a number, e.g.
        ``lambda a: a.late_agreement()[0] - a.late_agreement()[-1]``."""
        from ..intervals import bootstrap

        if self.doc_agree is None or self.doc_total is None:
            raise InputError("Intervals need per-document counts: run balanced_agreement(...) instead.")

        def of_documents(agree, total):  # the counts of a resample of documents (rows)
            return statistic(replace(self, agree=agree.sum(0), total=total.sum(0), doc_agree=None, doc_total=None))

        docs_first = (self.doc_agree.movedim(-1, 0), self.doc_total.movedim(-1, 0))
        return bootstrap(of_documents, *docs_first, n_resamples=n_resamples, seed=seed)

    def to_json(self) -> dict:
        """Every number of the agreement, as lists: the buckets and their predictions, each component's agreement
        per layer (``{component}_by_layer``) and per layer and bucket (``{component}_by_bucket``), per bucket the
        residual's first layer at 0.5, depth to agree and late-layer agreement, the ``mlp_out`` depth to agree
        (None where a component was not read), and the documents of a balanced run."""
        resid, mlp = "resid_post" in self.components, "mlp_out" in self.components
        return {
            "buckets": self.bucket_labels(),
            "bucket_counts": self.total.tolist(),
            **{f"{c}_by_layer": self.curve(c).tolist() for c in self.components},
            **{f"{c}_by_bucket": self.by_bucket(c).tolist() for c in self.components},
            "resid_first_layer_50": self.first_layer("resid_post", 0.5) if resid else None,
            "resid_mean_depth": self.mean_layer("resid_post") if resid else None,
            "resid_late_agreement": self.late_agreement("resid_post") if resid else None,
            "mlp_mean_depth": self.mean_layer("mlp_out") if mlp else None,
            "docs": list(self.docs),
        }

    def to_dataframe(self) -> pd.DataFrame:
        """Long table: component, layer, bucket, agreement, predictions in the bucket."""
        rows = []
        labels = self.bucket_labels()
        for comp in self.components:
            b = self.by_bucket(comp)
            c = self.curve(comp)
            for layer in range(self.n_layers):
                rows.append(
                    {
                        "component": comp,
                        "layer": layer,
                        "bucket": "all",
                        "agreement": c[layer],
                        "n": int(self.total.sum()),
                    }
                )
                for j, lab in enumerate(labels):
                    rows.append(
                        {
                            "component": comp,
                            "layer": layer,
                            "bucket": lab,
                            "agreement": b[layer, j],
                            "n": int(self.total[j]),
                        }
                    )
        return pd.DataFrame(rows)

    def top(self, k: int = 10, component: str = "mlp_out") -> pd.DataFrame:
        """The ``k`` layers whose ``component`` agrees most often with the final prediction: the rows of
        :meth:`to_dataframe` for ``component`` over all context lengths (bucket ``"all"``), the largest agreement
        first."""
        self._ci(component)
        df = self.to_dataframe()
        df = df[(df["component"] == component) & (df["bucket"] == "all")]
        return df.sort_values("agreement", ascending=False, kind="stable").head(k).reset_index(drop=True)

    def plot(self, bucket: str = "all") -> figures.Figure:
        """Each component's agreement with the final prediction per layer, over all context lengths (``bucket``:
        one of :meth:`bucket_labels` for one bucket of context lengths)."""
        labels = self.bucket_labels()
        if bucket != "all" and bucket not in labels:
            raise InputError(f"plot(bucket={bucket!r}): choose 'all' or one of {', '.join(labels)}.")
        series = {
            c: (self.curve(c) if bucket == "all" else self.by_bucket(c)[:, labels.index(bucket)]).tolist()
            for c in self.components
        }
        title = "top-1 agreement with the final prediction" + ("" if bucket == "all" else f", context {bucket}")
        return figures.lines(list(range(self.n_layers)), series, title=title, x_title="layer", y_title="agreement")


def _cap(keep: torch.Tensor, bucket: torch.Tensor, total: torch.Tensor, cap: int) -> torch.Tensor:
    """``keep`` limited so that no bucket exceeds ``cap`` predictions counting ``total`` (row-major order)."""
    flat_keep, flat_b = keep.flatten(), bucket.flatten().clamp(min=0)
    onehot = torch.nn.functional.one_hot(flat_b, len(total)) & flat_keep.unsqueeze(-1)
    seen = onehot.cumsum(0).gather(1, flat_b.unsqueeze(-1)).squeeze(-1)  # running count within the bucket
    ok = flat_keep & (seen + total[flat_b] <= cap)
    return ok.view_as(keep)


def _top1(model, x: torch.Tensor, scale: torch.Tensor, comp: str, rows: int) -> torch.Tensor:
    """Top-1 token of each vector of ``x`` read through the unembedding with the frozen final ``scale`` (``b_U``
    left out of ``mlp_out`` readouts), ``rows`` vectors at a time."""
    return torch.cat(
        [
            to_logits(model, x[r : r + rows], scale[r : r + rows], include_bias=comp != "mlp_out").argmax(-1)
            for r in range(0, len(x), rows)
        ]
    ).cpu()


def default_edges(window: int) -> tuple[int, ...]:
    """Powers of two from 1, the last bucket closed at the longest context: 1, 2, 4, ..., window + 1."""
    e = [1]
    while e[-1] * 2 <= window:
        e.append(e[-1] * 2)
    e.append(window + 1)
    return tuple(e)


def layer_agreement(
    model,
    corpus,
    *,
    window: int = 128,
    max_tokens: int | None = None,
    max_chunks: int | None = None,
    edges: Sequence[int] | None = None,
    components: Sequence[str] = COMPONENTS,
    max_per_bucket: int | None = None,
    batch_size: int = 4,
    readout_rows: int = 256,
    progress: bool = True,
) -> LayerAgreement:
    """Agreement of every layer's ``mlp_out`` / ``resid_post`` top-1 with the final top-1, by context length.

    Each chunk gives one prediction per context length, so long contexts dominate a plain count; with
    ``max_per_bucket`` each bucket keeps only its first predictions (in chunk order, which is breadth-first
    across documents), the readouts are done only for those, and the scan stops once every bucket is full.
    The cost is one forward per chunk plus ``2 × n_layers`` readouts through the unembedding per kept prediction.
    """
    comps = tuple(components)
    bad = [c for c in comps if c not in COMPONENTS]
    if bad or not comps:
        raise InputError(f"components must be a non-empty subset of {', '.join(COMPONENTS)}; got {list(components)}.")
    chunked = chunk_corpus(model, corpus, window=window, max_tokens=max_tokens, max_chunks=max_chunks)
    eds = tuple(int(e) for e in (edges if edges is not None else default_edges(chunked.body)))
    if len(eds) < 2 or any(b <= a for a, b in zip(eds[:-1], eds[1:])) or eds[0] < 0:
        raise InputError(f"edges must be increasing non-negative integers, at least two; got {list(eds)}.")
    n_layers = int(model.cfg.n_layers)
    names = [hook_name(c, layer) for c in comps for layer in range(n_layers)]
    names_set = set(names) | {LN_FINAL_SCALE}
    agree = torch.zeros((len(comps), n_layers, len(eds) - 1), dtype=torch.long)
    total = torch.zeros(len(eds) - 1, dtype=torch.long)
    pad = pad_id(model)
    first = 0 if chunked.bos is None else 1
    edges_t = torch.tensor(eds)
    with torch.no_grad():
        for a in tqdm(range(0, len(chunked), batch_size), desc="agreement", disable=not progress):
            ids = list(range(a, min(a + batch_size, len(chunked))))
            toks, mask = chunked.batch(ids, pad)
            logits, cache = model.run_with_cache(toks.to(model.cfg.device), names_filter=lambda n: n in names_set)
            ctx = (torch.arange(toks.shape[1]) - first + 1).expand_as(mask).contiguous()  # document tokens seen
            bucket = torch.bucketize(ctx, edges_t, right=True) - 1
            keep = mask & (bucket >= 0) & (bucket < len(eds) - 1)
            if max_per_bucket is not None:
                keep = _cap(keep, bucket, total, max_per_bucket)
            if not keep.any():
                if max_per_bucket is not None and bool((total >= max_per_bucket).all()):
                    break
                continue
            kd = keep.to(logits.device)
            final = logits.argmax(-1)[kd].cpu()
            bk = bucket[keep]
            total += torch.bincount(bk, minlength=len(eds) - 1)
            scale = cache[LN_FINAL_SCALE][kd]  # [n, 1]
            for ci, comp in enumerate(comps):
                for layer in range(n_layers):
                    x = cache[hook_name(comp, layer)][kd]
                    top = _top1(model, x, scale, comp, readout_rows)
                    agree[ci, layer] += torch.bincount(bk[top == final], minlength=len(eds) - 1)
            del cache
    return LayerAgreement(agree=agree, total=total, components=comps, edges=eds,
                          model=str(getattr(model.cfg, "model_name", "") or "model"), corpus=chunked.name)


def balanced_agreement(
    model,
    corpus,
    *,
    n_docs: int = 24,
    positions: int = 4,
    max_context: int = 1024,
    edges: Sequence[int] | None = None,
    components: Sequence[str] = COMPONENTS,
    seed: int = 0,
    batch_size: int = 2,
    readout_rows: int = 256,
    progress: bool = True,
) -> LayerAgreement:
    """Layer agreement by context length with **the same documents in every bucket** (RQ4).

    ``n_docs`` documents of at least ``max_context`` tokens are drawn (seeded); from each, one window of
    ``max_context`` tokens starting at a random offset is run once with BOS in front, and in every context bucket
    ``positions`` predictions are drawn uniformly from the bucket's positions (all of them where the bucket is
    narrower). So each bucket holds predictions from the same ``n_docs`` documents, in equal numbers per document,
    and short contexts are random points of a file (with the file before them cut off) rather than file headers.
    When fewer than ``n_docs`` documents are that long, ``max_context`` falls to the length the ``n_docs``-th
    longest document reaches. Default buckets: powers of two from 1 to ``max_context``. Counts are kept per
    document, so :meth:`LayerAgreement.interval` resamples documents.
    """
    comps = tuple(components)
    bad = [c for c in comps if c not in COMPONENTS]
    if bad or not comps:
        raise InputError(f"components must be a non-empty subset of {', '.join(COMPONENTS)}; got {list(components)}.")
    if n_docs < 1 or positions < 1:
        raise InputError(f"n_docs and positions must be at least 1; got {n_docs} and {positions}.")
    # no budget: every document is tokenized (the window only sets how the unused plan is cut)
    chunked = chunk_corpus(model, corpus, window=int(model.cfg.n_ctx), min_tokens=1)
    has_bos = chunked.bos is not None
    limit = int(model.cfg.n_ctx) - has_bos
    if max_context < 1:
        raise InputError(f"max_context must be at least 1; got {max_context}.")
    lens = np.array([len(x) for x in chunked.ids])
    if len(lens) < n_docs:
        raise InputError(
            f"The corpus {chunked.name!r} has {len(lens)} documents; balanced agreement needs n_docs={n_docs}. "
            "Lower n_docs or use a larger corpus."
        )
    # the context must leave one token to predict after it: a window of ctx + 1 document tokens
    reach = int(np.sort(lens)[::-1][n_docs - 1]) - 1
    ctx_max = min(int(max_context), limit - 1, reach)
    if ctx_max < 1:
        raise InputError(f"The {n_docs} longest documents of {chunked.name!r} are too short for any context.")
    eds = tuple(int(e) for e in (edges if edges is not None else default_edges(ctx_max)))
    if len(eds) < 2 or any(b <= a for a, b in zip(eds[:-1], eds[1:])) or eds[0] < 1 or eds[-1] > ctx_max + 1:
        raise InputError(
            f"edges must be increasing integers from at least 1 to at most {ctx_max + 1} (the longest context "
            f"plus one); got {list(eds)}."
        )
    g = torch.Generator().manual_seed(int(seed))
    eligible = np.nonzero(lens >= ctx_max + 1)[0]
    docs = sorted(eligible[torch.randperm(len(eligible), generator=g)[:n_docs].numpy()].tolist())
    n_b = len(eds) - 1
    n_layers = int(model.cfg.n_layers)
    names_set = {hook_name(c, layer) for c in comps for layer in range(n_layers)} | {LN_FINAL_SCALE}
    doc_agree = torch.zeros((len(comps), n_layers, n_b, len(docs)), dtype=torch.long)
    doc_total = torch.zeros((n_b, len(docs)), dtype=torch.long)
    first = int(has_bos)
    span = eds[-1] - 1  # the longest context drawn
    plan = []  # (doc slot, window tokens, [(bucket, position in the sequence)])
    for slot, d in enumerate(docs):
        start = int(torch.randint(0, int(lens[d]) - span, (1,), generator=g)) if lens[d] > span else 0
        body = torch.as_tensor(chunked.ids[d][start : start + span], dtype=torch.long)
        toks = torch.cat([torch.tensor([chunked.bos]), body]) if has_bos else body
        picks = []
        for j in range(n_b):
            ctx = torch.arange(eds[j], eds[j + 1])  # context lengths of the bucket
            chosen = ctx[torch.randperm(len(ctx), generator=g)[:positions]]
            picks += [(j, int(c) - 1 + first) for c in chosen.sort().values]  # the prediction after c tokens
        plan.append((slot, toks, picks))
    with torch.no_grad():
        for a in tqdm(range(0, len(plan), batch_size), desc="agreement", disable=not progress):
            part = plan[a : a + batch_size]
            toks = torch.stack([t for _, t, _ in part]).to(model.cfg.device)
            logits, cache = model.run_with_cache(toks, names_filter=lambda n: n in names_set)
            rows = torch.tensor([i for i, (_, _, picks) in enumerate(part) for _ in picks])
            pos = torch.tensor([p for _, _, picks in part for _, p in picks])
            bk = torch.tensor([j for _, _, picks in part for j, _ in picks])
            slot = torch.tensor([s for s, _, picks in part for _ in picks])
            final = logits[rows, pos].argmax(-1).cpu()
            doc_total.index_put_((bk, slot), torch.ones_like(bk), accumulate=True)
            scale = cache[LN_FINAL_SCALE][rows, pos]
            for ci, comp in enumerate(comps):
                for layer in range(n_layers):
                    x = cache[hook_name(comp, layer)][rows, pos]
                    top = _top1(model, x, scale, comp, readout_rows)
                    hit = top == final
                    doc_agree[ci, layer].index_put_((bk[hit], slot[hit]), torch.ones_like(bk[hit]), accumulate=True)
            del cache
    return LayerAgreement(agree=doc_agree.sum(-1), total=doc_total.sum(-1), components=comps, edges=eds,
                          model=str(getattr(model.cfg, "model_name", "") or "model"), corpus=chunked.name,
                          doc_agree=doc_agree, doc_total=doc_total, docs=tuple(chunked.names[d] for d in docs))


def depth_intervals(a: LayerAgreement, n_resamples: int = 1000) -> dict:
    """How deep the residual must go before it agrees, in the shortest and longest contexts, with 95% intervals
    that resample the documents (a balanced agreement only; else ``{}``): residual depth to agree
    (:meth:`LayerAgreement.mean_layer`) and late-layer agreement (:meth:`LayerAgreement.late_agreement`) in the
    shortest and longest non-empty context buckets, and their gaps (longest − shortest depth: positive when long
    contexts need later layers; shortest − longest late agreement)."""
    if a.doc_agree is None:
        return {}

    def pick(f, i):
        return lambda x: [v for v, t in zip(f(x), x.total.tolist()) if t > 0][i]

    depth = lambda x: x.mean_layer("resid_post")  # noqa: E731
    late = lambda x: x.late_agreement("resid_post")  # noqa: E731
    stats = {
        "depth_shortest": pick(depth, 0),
        "depth_longest": pick(depth, -1),
        "depth_gap": lambda x: pick(depth, -1)(x) - pick(depth, 0)(x),
        "late_agreement_shortest": pick(late, 0),
        "late_agreement_longest": pick(late, -1),
        "late_agreement_gap": lambda x: pick(late, 0)(x) - pick(late, -1)(x),
    }
    return {k: a.interval(f, n_resamples=n_resamples) for k, f in stats.items()}


__all__ = [
    "COMPONENTS",
    "LayerAgreement",
    "balanced_agreement",
    "default_edges",
    "depth_intervals",
    "layer_agreement",
]
