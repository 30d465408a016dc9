"""``evaluate(model)``: held-out code loss and the closing-paren accuracy, the numbers a model card needs.

Loss: every file of the corpus (standard-library test split, HumanEval) is tokenized on its own, with the
model's BOS token in front when the model prepends one, and scored in windows of at most ``window`` tokens
that overlap by one token, so every token after the first is predicted exactly once. The loss is the
token-weighted mean in nats/token over every token of a file but its first (which has no context without
a BOS token; excluding it always makes the numbers with and without BOS count the same targets);
``bits_per_byte`` divides the same total by the UTF-8 bytes of the text
scored, which compares models with different tokenizers. The text is capped by characters (the first
``file_chars`` characters of each file, files in path order, until ``max_chars``), so every model is scored
on exactly the same text.

Paren accuracy: the Miller et al. template from :mod:`codecircuits.tasks.parens` (``#print the string {num}``
/ ``print(`` + ``str(`` x n + ``{num}``, the answer closes n + 1 parens with one token), top-1, per number of
parens.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .errors import InputError

LOGITS_BUDGET = 2**28  # elements of the logits tensor of one batch (1 GiB in float32)


@dataclass(frozen=True)
class CorpusLoss:
    """Next-token loss of one model on one corpus."""

    corpus: str
    files: int
    chars: int
    bytes: int
    tokens: int  # tokens predicted
    nats: float  # total
    window: int

    @property
    def loss(self) -> float:
        """Mean nats per predicted token."""
        return self.nats / self.tokens

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss"] = self.loss
        d["bits_per_byte"] = self.bits_per_byte
        return d


@dataclass(frozen=True)
class EvalResult:
    """``codecircuits eval``'s numbers for one model."""

    model: str
    prepend_bos: bool
    bos_token: str | None
    losses: tuple[CorpusLoss, ...]
    paren_accuracy: dict[int, float]  # parens to close (1..4) -> top-1 accuracy
    paren_prompts: dict[int, int]  # parens to close -> number of prompts
    settings: dict = field(default_factory=dict)

    def loss(self, corpus: str) -> CorpusLoss:
        for c in self.losses:
            if c.corpus == corpus:
                return c
        raise KeyError(f"no loss for corpus {corpus!r}; have {[c.corpus for c in self.losses]}")

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "prepend_bos": self.prepend_bos,
            "bos_token": self.bos_token,
            "losses": {c.corpus: c.to_dict() for c in self.losses},
            "paren_accuracy": {str(k): v for k, v in self.paren_accuracy.items()},
            "paren_prompts": {str(k): v for k, v in self.paren_prompts.items()},
            "settings": self.settings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_dataframe(self):
        """One row per metric: ``metric``, ``value``, ``detail``."""
        import pandas as pd

        rows = []
        for c in self.losses:
            rows.append(dict(metric=f"loss:{c.corpus}", value=c.loss, detail=f"{c.tokens} tokens, nats/token"))
            rows.append(dict(metric=f"bpb:{c.corpus}", value=c.bits_per_byte, detail=f"{c.bytes} bytes"))
        for k, v in self.paren_accuracy.items():
            rows.append(dict(metric=f"parens:{k}", value=v, detail=f"{self.paren_prompts[k]} prompts"))
        return pd.DataFrame(rows)

    def top(self, k: int = 10):
        """The ``k`` paren counts the model closes best (highest accuracy first), as every ``top`` ranks: the rows
        with the largest score first. :meth:`hardest` gives the other end."""
        df = self.to_dataframe()
        return df[df.metric.str.startswith("parens:")].nlargest(k, "value", keep="first")

    def hardest(self, k: int = 10):
        """The ``k`` paren counts with the lowest accuracy (where the model fails first)."""
        df = self.to_dataframe()
        return df[df.metric.str.startswith("parens:")].nsmallest(k, "value", keep="first")

    def plot(self):
        """The closing-paren accuracy per number of parens to close, as bars."""
        from . import figures

        counts = list(self.paren_accuracy)
        return figures.bars([f"{k} parens" for k in counts], [self.paren_accuracy[k] for k in counts],
                            title=f"{self.model}: closing-paren accuracy", value_title="top-1 accuracy")

    def __str__(self) -> str:
        lines = [
            f"{self.model}  (prepend BOS: {self.prepend_bos}{f', {self.bos_token!r}' if self.prepend_bos else ''})"
        ]
        for c in self.losses:
            lines.append(
                f"  loss {c.corpus:<12} {c.loss:.4f} nats/token  {c.bits_per_byte:.4f} bits/byte  "
                f"({c.tokens} tokens, {c.files} files, {c.chars} chars)"
            )
        accs = "  ".join(f"{k}:{v:.3f}" for k, v in self.paren_accuracy.items())
        n = sorted(set(self.paren_prompts.values()))
        lines.append(f"  parens accuracy (parens to close: top-1)  {accs}  ({'/'.join(map(str, n))} prompts each)")
        return "\n".join(lines)


@contextmanager
def bos_setting(model, prepend_bos: bool | None):
    """Temporarily set ``model.cfg.default_prepend_bos`` (``None`` leaves it as it is)."""
    old = model.cfg.default_prepend_bos
    if prepend_bos is not None:
        model.cfg.default_prepend_bos = bool(prepend_bos)
    try:
        yield bool(model.cfg.default_prepend_bos)
    finally:
        model.cfg.default_prepend_bos = old


def _windows(ids: list[int], window: int, skip: int) -> list[tuple[list[int], int]]:
    """Chunks of at most ``window`` tokens overlapping by one, each token after the first a target once.

    Returns ``(chunk, n_skipped_targets)``; the first ``skip`` targets of the file are not scored.
    """
    if len(ids) < 2:
        return []
    step = window - 1
    out = []
    for i in range(0, len(ids) - 1, step):
        c = ids[i : i + window]
        first_target = i + 1  # index in ids of c[1]
        s = max(0, min(len(c) - 1, skip + 1 - first_target))
        if len(c) >= 2 and s < len(c) - 1:
            out.append((c, s))
    return out


@torch.no_grad()
def corpus_loss(
    model,
    corpus,
    *,
    max_chars: int = 20_000,
    file_chars: int = 2_000,
    window: int = 512,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool = True,
) -> CorpusLoss:
    """Token-weighted next-token loss of ``model`` on ``corpus`` (a :class:`codecircuits.corpus.Corpus`).

    Args:
        max_chars: total characters scored (files in path order; 0 = all).
        file_chars: at most this many characters of each file (0 = whole files).
        window: longest window scored at once (capped by the model's context).
        prepend_bos: overrides the model's ``default_prepend_bos``.
    """
    if window < 2:
        raise InputError(f"window must be at least 2 tokens, got {window}.")
    tok = model.tokenizer
    use_bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    if use_bos and tok.bos_token_id is None:
        raise InputError(f"{model.cfg.model_name} has no BOS token; evaluate it with prepend_bos=False.")
    window = min(window, int(model.cfg.n_ctx))
    texts, chars = [], 0
    for f in sorted(corpus, key=lambda f: f.path):
        t = f.text[:file_chars] if file_chars else f.text
        if max_chars and chars + len(t) > max_chars:
            t = t[: max_chars - chars]
        if not t:
            break
        texts.append(t)
        chars += len(t)
    if not texts:
        raise InputError(f"The corpus {corpus.name!r} has no text to score.")
    chunks = []
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        if use_bos:
            ids = [tok.bos_token_id] + ids
        # with BOS, ids[1] is the file's first token: skip it as a target so both settings score the same tokens
        chunks += _windows(ids, window, skip=1 if use_bos else 0)
    chunks.sort(key=lambda c: len(c[0]), reverse=True)
    # the logits of a batch are batch x window x vocabulary floats: keep them under LOGITS_BUDGET elements
    # (Gemma's 262k vocabulary makes one 512-token window 0.5 GB)
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // (window * int(model.cfg.d_vocab))))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = model.cfg.device
    nats, count = 0.0, 0
    bar = tqdm(total=len(chunks), disable=not progress, desc=f"loss {corpus.name}", unit="window")
    for i in range(0, len(chunks), batch_size):
        batch = chunks[i : i + batch_size]
        n = max(len(c) for c, _ in batch)
        toks = torch.full((len(batch), n), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), n - 1), dtype=torch.bool)
        for j, (c, s) in enumerate(batch):
            toks[j, : len(c)] = torch.tensor(c)
            mask[j, s : len(c) - 1] = True
        toks = toks.to(device)
        logits = model(toks)  # right padding: padded positions never influence earlier ones (causal)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), toks[:, 1:].flatten(), reduction="none"
        ).view(len(batch), n - 1)
        del logits
        nats += nll[mask.to(nll.device)].sum().item()
        count += int(mask.sum())
        bar.update(len(batch))
    bar.close()
    return CorpusLoss(corpus=corpus.name, files=len(texts), chars=chars,
                      bytes=sum(len(t.encode("utf-8")) for t in texts), tokens=count, nats=nats, window=window)


def paren_accuracy(
    model, *, n_numbers: int = 100, seed: int = 20, max_parens: int = 4, progress: bool = False
) -> tuple[dict[int, float], dict[int, int]]:
    """Top-1 accuracy on the Miller et al. template for 1..``max_parens`` closing parens.

    Returns ``({n_parens: accuracy}, {n_parens: n_prompts})``.
    """
    from .tasks import parens

    ds = parens.dataset(model, n_values=tuple(range(max_parens)), n_numbers=n_numbers, seed=seed)
    acc = parens.accuracy(model, ds, progress=progress)
    counts = {k: sum(1 for p in ds if p.n_open == k) for k in acc}
    return dict(sorted(acc.items())), dict(sorted(counts.items()))


def evaluate(
    model,
    *,
    corpora: tuple = ("stdlib:test", "humaneval"),
    max_chars: int = 20_000,
    file_chars: int = 2_000,
    window: int = 512,
    n_numbers: int = 100,
    seed: int = 20,
    prepend_bos: bool | None = None,
    progress: bool = True,
) -> EvalResult:
    """Held-out loss on ``corpora`` and paren accuracy for 1-4 parens.

    ``corpora`` holds specs for :func:`codecircuits.corpus.load` (``"stdlib:test"``, ``"humaneval"``, a
    directory) or :class:`~codecircuits.corpus.Corpus` objects.

    ``prepend_bos`` overrides the model's setting for both the losses and the paren prompts.
    """
    from . import corpus as corpus_mod

    with bos_setting(model, prepend_bos) as bos:
        losses = tuple(
            corpus_loss(model, corpus_mod.load(spec) if isinstance(spec, str) else spec, max_chars=max_chars,
                        file_chars=file_chars, window=window, progress=progress)
            for spec in corpora
        )
        acc, counts = paren_accuracy(model, n_numbers=n_numbers, seed=seed, progress=progress)
    return EvalResult(
        model=str(model.cfg.model_name),
        prepend_bos=bos,
        bos_token=model.tokenizer.bos_token if bos else None,
        losses=losses,
        paren_accuracy=acc,
        paren_prompts=counts,
        settings=dict(corpora=[c if isinstance(c, str) else c.name for c in corpora], max_chars=max_chars,
                      file_chars=file_chars, window=window, n_numbers=n_numbers, seed=seed),
    )
