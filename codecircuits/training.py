"""Train our own small code LMs: a byte-level BPE tokenizer and a GPT-NeoX model, seeded and resumable.

The recipe that produced the shipped ``cc-py-neox`` (see its ``MODEL.md``):

1. corpus: the interpreter's standard library without its test suites, split by file into train /
   validation / test by a hash of the path (:mod:`codecircuits.corpus`), or any directory of source files;
2. tokenizer: byte-level BPE trained on the train split only, digits split one per token, runs of ``)``
   isolated and ``)``, ``))``, ``)))``, ``))))`` guaranteed single tokens (the paren task's labels);
3. data: every train file is tokenized as ``<|endoftext|> file``, the files are concatenated into one token
   stream, and the batch of step ``s`` is a set of windows whose start offsets are a pure function of
   ``(seed, s)``, so a resumed run sees exactly the batches an uninterrupted run would;
4. model: ``GPTNeoXForCausalLM`` (plain GELU MLP, rotary, parallel attention + MLP), AdamW with linear
   warm-up and cosine decay, gradient clipping, no dropout, float32;
5. a checkpoint (model, optimizer, scheduler, RNG states, step, elapsed time, settings) every
   ``checkpoint_every`` steps, written atomically; ``resume=True`` continues from it.

Reproducibility: with the same corpus, settings, seed, torch version and thread count, a run and a run that
was interrupted and resumed give the same weights (see ``tests/test_training.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import figures
from .errors import InputError

EOT = "<|endoftext|>"
PAREN_TOKENS = (")", "))", ")))", "))))")
CHECKPOINT_DIR = "checkpoint"
ARCHS = ("neox",)


# --------------------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096):
    """Byte-level BPE on ``texts`` with digits split and paren runs ``)``..``))))`` as single tokens.

    Returns a ``transformers.PreTrainedTokenizerFast`` whose BOS, EOS and padding token is ``<|endoftext|>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise InputError("Cannot train a tokenizer on an empty list of texts.")
    if vocab_size < 256 + 1 + 8:
        raise InputError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least 265 entries.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(r"\)+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # the paren runs are rare in real code (")))))" even rarer); a few thousand extra occurrences make BPE
    # learn their merges early, so each of ) )) ))) )))) is one token as in SmolLM2's and CodeLlama's vocabularies
    extra = [" ".join(PAREN_TOKENS)] * 5000
    tok.train_from_iterator(list(texts) + extra, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT)
    for s in PAREN_TOKENS:
        if len(fast.encode(s)) != 1:
            raise RuntimeError(f"BPE training did not make {s!r} a single token; raise vocab_size.")
    return fast


def encode_stream(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """``<|endoftext|> text`` for every text, concatenated into one int32 token stream."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = np.empty(sum(len(x) + 1 for x in ids), dtype=np.int32)
    i = 0
    for x in ids:
        out[i] = eot
        out[i + 1 : i + 1 + len(x)] = x
        i += len(x) + 1
    return out


# --------------------------------------------------------------------------------------------------------
# settings, model


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (saved in checkpoints and the model card)."""

    arch: str = "neox"
    corpus: str = "stdlib"  # "stdlib" (train split) or a directory of source files (its train split)
    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 256
    rotary_pct: float = 0.25
    batch_size: int = 8
    steps: int = 450
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    eval_tokens: int = 200_000  # cap on validation tokens for the final loss (0 = the whole split)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise InputError(f"Unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}.")
        for k in ("vocab_size", "d_model", "n_layers", "n_heads", "d_mlp", "n_ctx", "batch_size", "steps"):
            if getattr(self, k) <= 0:
                raise InputError(f"{k} must be positive, got {getattr(self, k)}.")
        if self.d_model % self.n_heads:
            raise InputError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}.")

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)

    # settings that must match between a checkpoint and a resumed run (steps may not change either:
    # the learning-rate schedule depends on it)
    def identity(self) -> dict:
        d = asdict(self)
        d.pop("checkpoint_every")
        d.pop("eval_tokens")
        return d


def build_model(cfg: TrainConfig, tokenizer):
    """A freshly initialised (seeded) GPT-NeoX causal LM for ``cfg``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    eot = tokenizer.convert_tokens_to_ids(EOT)
    hf_cfg = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                           num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_mlp, hidden_act="gelu",
                           rotary_pct=cfg.rotary_pct, max_position_embeddings=cfg.n_ctx, use_parallel_residual=True,
                           attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False, bos_token_id=eot,
                           eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(cfg.seed)
    return GPTNeoXForCausalLM(hf_cfg)


def batch_starts(seed: int, step: int, batch_size: int, n_tokens: int, n_ctx: int) -> np.ndarray:
    """Start offsets of the windows of step ``step``: a pure function of (seed, step), so resuming is exact."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - n_ctx - 1, size=batch_size)


def get_batch(stream: np.ndarray, starts: np.ndarray, n_ctx: int) -> torch.Tensor:
    idx = starts[:, None] + np.arange(n_ctx + 1)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------------------------------------
# losses


@torch.no_grad()
def stream_loss(model, stream: np.ndarray, n_ctx: int, *, max_tokens: int = 0, batch_size: int = 16) -> float:
    """Mean next-token loss (nats) of an HF causal LM over non-overlapping windows of ``stream``."""
    n = len(stream) - 1
    if max_tokens:
        n = min(n, max_tokens)
    n_win = n // n_ctx
    if n_win == 0:
        raise InputError(f"The evaluation stream has {len(stream)} tokens, fewer than one window of {n_ctx}.")
    starts = np.arange(n_win) * n_ctx
    total, count = 0.0, 0
    model.eval()
    for i in range(0, n_win, batch_size):
        b = get_batch(stream, starts[i : i + batch_size], n_ctx)
        logits = model(b[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += b[:, 1:].numel()
    return total / count


def sample_starts(stream_len: int, n_ctx: int, n: int = 16) -> np.ndarray:
    """Starts of ``n`` evenly spaced windows among the non-overlapping windows :func:`stream_loss` scores."""
    n_win = (stream_len - 1) // n_ctx
    return (np.linspace(0, n_win - 1, num=min(n, n_win)).round().astype(np.int64)) * n_ctx


@torch.no_grad()
def sample_loss(model, stream: np.ndarray, n_ctx: int, n: int = 16) -> dict:
    """Loss on a small fixed sample of validation windows, recorded in the card so the weights can be checked fast."""
    starts = sample_starts(len(stream), n_ctx, n)
    b = get_batch(stream, starts, n_ctx)
    logits = model(b[:, :-1])
    logits = getattr(logits, "logits", logits).float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1)).item()
    return {"loss": loss, "windows": len(starts), "tokens": int(b[:, 1:].numel())}


def bigram_loss(train: np.ndarray, evalstream: np.ndarray, vocab: int, n_ctx: int, *, max_tokens: int = 0) -> dict:
    """Loss of an interpolated bigram model (counts from ``train``) on the positions :func:`stream_loss` scores.

    ``p(b|a) = lam * c(a,b)/c(a) + (1-lam) * p_uni(b)`` with an add-one unigram; ``lam`` is the best of a
    small grid on the evaluation stream itself, which can only make the baseline stronger.
    """
    a, b = train[:-1].astype(np.int64), train[1:].astype(np.int64)
    pair = np.bincount(a * vocab + b, minlength=vocab * vocab).reshape(vocab, vocab).astype(np.float64)
    ctx = pair.sum(1)
    uni = (np.bincount(train, minlength=vocab) + 1.0) / (len(train) + vocab)
    n = len(evalstream) - 1
    if max_tokens:
        n = min(n, max_tokens)
    n = (n // n_ctx) * n_ctx
    pos = np.arange(n + (n // n_ctx))  # window w covers stream[w*n_ctx : w*n_ctx + n_ctx + 1]
    w = np.arange(n // n_ctx)
    prev = (w[:, None] * n_ctx + np.arange(n_ctx)[None, :]).reshape(-1)
    del pos
    x, y = evalstream[prev].astype(np.int64), evalstream[prev + 1].astype(np.int64)
    cond = np.where(ctx[x] > 0, pair[x, y] / np.maximum(ctx[x], 1), 0.0)
    best = None
    for lam in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99):
        p = np.where(ctx[x] > 0, lam * cond + (1 - lam) * uni[y], uni[y])
        loss = float(-np.log(p).mean())
        if best is None or loss < best["loss"]:
            best = {"loss": loss, "lambda": lam}
    best["unigram_loss"] = float(-np.log(uni[y]).mean())
    best["tokens"] = int(len(y))
    return best


# --------------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def save_checkpoint(directory: Path, *, model, optimizer, step: int, elapsed: float, cfg: TrainConfig, losses) -> None:
    """Write ``directory/checkpoint/state.pt`` atomically (a crash mid-write leaves the previous one)."""
    ck = directory / CHECKPOINT_DIR
    ck.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "elapsed": elapsed,
        "config": cfg.identity(),
        "rng": _rng_state(),
        "losses": list(losses),
    }
    tmp = ck / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, ck / "state.pt")


def load_checkpoint(directory: Path) -> dict | None:
    p = directory / CHECKPOINT_DIR / "state.pt"
    if not p.is_file():
        return None
    # our own file, written by save_checkpoint; it holds numpy/python RNG states, hence weights_only=False
    return torch.load(p, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------------------------------
# the run


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced."""

    out_dir: str
    config: TrainConfig
    steps_done: int
    finished: bool  # False when stopped early by ``max_minutes`` (resume to continue)
    train_tokens_seen: int
    corpus_stats: dict
    val_loss: float | None
    bigram: dict | None
    wall_seconds: float
    losses: tuple[tuple[int, float], ...]  # (step, mean train loss over the last logging interval)
    val_sample: dict | None = None  # loss on 16 evenly spaced validation windows (see sample_loss)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d

    def to_dataframe(self):
        """One row per logging interval: the step and the mean training loss over the interval."""
        import pandas as pd

        return pd.DataFrame(list(self.losses), columns=["step", "loss"])

    def top(self, k: int = 10):
        """The ``k`` rows of :meth:`to_dataframe` with the largest training loss, largest first."""
        return self.to_dataframe().sort_values("loss", ascending=False, kind="stable").head(k)

    def plot(self) -> figures.Figure:
        """The training loss over the steps."""
        if not self.losses:
            raise InputError("This run logged no losses: nothing to plot.")
        steps, losses = zip(*self.losses)
        return figures.lines([int(s) for s in steps], {"train loss": [float(v) for v in losses]},
                             title="training loss", x_title="step", y_title="loss")


def _corpus_split(spec: str, split: str):
    from . import corpus

    if spec == "stdlib":
        return corpus.stdlib(split)
    return corpus.directory(spec, split=split)


def prepare_data(cfg: TrainConfig, out_dir: Path, *, texts: dict[str, list[str]] | None = None):
    """Tokenizer (trained once, then reused from ``out_dir``) and train / validation token streams."""
    from transformers import PreTrainedTokenizerFast

    stats: dict = {}
    if texts is None:
        texts = {}
        for split in ("train", "validation"):
            try:
                c = _corpus_split(cfg.corpus, split)
            except InputError:
                if split == "train":
                    raise
                continue  # a small directory may have no file in the validation split: no validation loss
            texts[split] = c.texts()
            stats[split] = {"files": len(c), "chars": c.n_chars, "skipped_undecodable": c.skipped}
    else:
        for split, t in texts.items():
            stats[split] = {"files": len(t), "chars": sum(map(len, t)), "skipped_undecodable": 0}
    if not texts.get("train"):
        raise InputError("The training corpus is empty.")
    tok_file = out_dir / "tokenizer.json"
    if tok_file.is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), bos_token=EOT, eos_token=EOT, pad_token=EOT)
    else:
        tokenizer = train_tokenizer(texts["train"], cfg.vocab_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(out_dir)
    streams = {split: encode_stream(tokenizer, t) for split, t in texts.items() if t}
    for split, s in streams.items():
        stats[split]["tokens"] = int(len(s))
    if len(streams["train"]) <= cfg.n_ctx + 2:
        raise InputError(
            f"The training corpus has only {len(streams['train'])} tokens, fewer than one window of {cfg.n_ctx}."
        )
    return tokenizer, streams, stats


def _resume_state(out: Path, cfg: TrainConfig, resume: bool) -> dict | None:
    """The checkpoint to continue from (``None`` for a fresh run), after checking that a fresh run would not
    overwrite one and that a resumed one has the checkpoint's settings."""
    state = load_checkpoint(out) if resume else None
    if resume and state is None:
        raise InputError(f"Nothing to resume: {out / CHECKPOINT_DIR / 'state.pt'} does not exist.")
    if not resume and (out / CHECKPOINT_DIR / "state.pt").is_file():
        raise InputError(f"{out} already holds a training checkpoint; pass resume=True (--resume) or pick a new --out.")
    if state is not None and state["config"] != cfg.identity():
        diff = {k: (state["config"].get(k), v) for k, v in cfg.identity().items() if state["config"].get(k) != v}
        raise InputError(f"The checkpoint in {out} was made with other settings (checkpoint, now): {diff}.")
    return state


def _optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95) with weight decay on the matrices only."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
        betas=(0.9, 0.95), eps=1e-8)


def _train_step(model, optimizer, cfg: TrainConfig, stream: np.ndarray, step: int) -> float:
    """One optimizer step on the batch of ``step`` (a pure function of seed and step); returns its loss."""
    for g in optimizer.param_groups:
        g["lr"] = lr_at(cfg, step)
    batch = get_batch(stream, batch_starts(cfg.seed, step, cfg.batch_size, len(stream), cfg.n_ctx), cfg.n_ctx)
    logits = model(batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.item()


def _evaluate_and_save(model, tokenizer, streams: dict, cfg: TrainConfig, out: Path):
    """A finished run's validation losses ``(val_loss, bigram, val_sample)`` (``None`` without a long enough
    validation split); writes the model and tokenizer into ``out``."""
    val_loss = bigram = val_sample = None
    model.eval()
    if "validation" in streams and len(streams["validation"]) > cfg.n_ctx + 1:
        val_loss = stream_loss(model, streams["validation"], cfg.n_ctx, max_tokens=cfg.eval_tokens)
        val_sample = sample_loss(model, streams["validation"], cfg.n_ctx)
        bigram = bigram_loss(
            streams["train"], streams["validation"], len(tokenizer), cfg.n_ctx, max_tokens=cfg.eval_tokens
        )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return val_loss, bigram, val_sample


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    max_minutes: float | None = None,
    progress: bool = True,
    texts: dict[str, list[str]] | None = None,
    log_every: int = 50,
    on_step: Callable[[int, float], None] | None = None,
    minutes: float | None = None,
) -> TrainResult:
    """Train a code LM from ``cfg`` into ``out_dir`` (tokenizer, checkpoints, then the final model and card).

    Args:
        cfg: the run's settings; ``cfg.steps`` fixes the schedule.
        out_dir: where the tokenizer, ``checkpoint/`` and, at the end, ``config.json`` +
            ``model.safetensors`` + ``MODEL.md`` go.
        resume: continue from ``out_dir/checkpoint`` (its settings must equal ``cfg``'s).
        max_minutes: stop (after writing a checkpoint) once this much wall time has passed in this call;
            the result then has ``finished=False`` and a later ``resume=True`` call continues.
        texts: ``{"train": [...], "validation": [...]}`` instead of reading ``cfg.corpus`` (tests).
        on_step: called as ``on_step(step, loss)`` after every optimizer step.
        minutes: instead of ``cfg.steps``, train for about this long: the step count is fixed once, from
            the speed of the first warm-up steps (whose learning rates do not depend on it), and recorded
            in the checkpoint and card; rerun with that ``--steps`` for a bit-identical model.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    state = _resume_state(out, cfg, resume)
    t_call = time.time()
    tokenizer, streams, stats = prepare_data(cfg, out, texts=texts)
    model = build_model(cfg, tokenizer)
    optimizer = _optimizer(model, cfg)
    step, elapsed_before, losses = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        step, elapsed_before, losses = state["step"], state["elapsed"], [tuple(x) for x in state["losses"]]
    model.train()

    calibrate_at = None  # with ``minutes``: the step at which the step count is fixed from the speed so far
    if minutes is not None and state is None:
        if minutes <= 0:
            raise InputError(f"minutes must be positive, got {minutes}.")
        calibrate_at = max(1, min(cfg.warmup_steps, 10))
        cfg = cfg.replace(steps=max(cfg.steps, calibrate_at + 1))  # provisional, replaced at calibrate_at
    window: list[float] = []
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train", unit="step")
    t0 = time.time()
    while step < cfg.steps:
        lv = _train_step(model, optimizer, cfg, streams["train"], step)
        step += 1
        if step == calibrate_at:
            per_step = (time.time() - t0) / step
            cfg = cfg.replace(steps=max(step + 1, int((60 * minutes - (t0 - t_call)) / per_step)))
            bar.total = cfg.steps
        window.append(lv)
        if on_step is not None:
            on_step(step, lv)
        if step % log_every == 0 or step == cfg.steps:
            losses.append((step, float(np.mean(window))))
            window = []
            bar.set_postfix(loss=f"{losses[-1][1]:.3f}")
        bar.update(1)
        out_of_time = max_minutes is not None and (time.time() - t_call) > 60 * max_minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            elapsed = elapsed_before + time.time() - t0
            save_checkpoint(out, model=model, optimizer=optimizer, step=step, elapsed=elapsed, cfg=cfg, losses=losses)
        if out_of_time and step < cfg.steps:
            break
    bar.close()
    finished = step >= cfg.steps
    train_seconds = elapsed_before + (time.time() - t0)

    val_loss, bigram, val_sample = _evaluate_and_save(model, tokenizer, streams, cfg, out) if finished else (None,) * 3
    result = TrainResult(out_dir=str(out), config=cfg, steps_done=step, finished=finished,
                         train_tokens_seen=step * cfg.batch_size * cfg.n_ctx, corpus_stats=stats, val_loss=val_loss,
                         bigram=bigram, wall_seconds=train_seconds, losses=tuple(losses), val_sample=val_sample)
    if finished:
        (out / "training.json").write_text(json.dumps(result.to_dict(), indent=1))
        (out / "MODEL.md").write_text(model_card(result, n_params=sum(p.numel() for p in model.parameters())))
    return result


def model_card(r: TrainResult, *, n_params: int, name: str = "cc-py-neox", notes: str = "") -> str:
    """The ``MODEL.md`` of a finished run: corpus, token counts, settings, seed, time, losses."""
    c = r.config
    s = r.corpus_stats
    corpus_desc = (
        f"the Python {platform.python_version()} standard library without its test suites"
        if c.corpus == "stdlib"
        else f"the source files under `{c.corpus}`"
    )
    lines = [
        f"# {name}",
        "",
        f"A small GPT-NeoX code LM (plain GELU MLP, parallel attention + MLP, rotary on {c.rotary_pct:.0%} of each "
        f"head) trained by `codecircuits train` on {corpus_desc}. {n_params / 1e6:.2f}M parameters.",
        "",
        "## Corpus",
        "",
        "Split by file (hash of the relative path, `codecircuits.corpus.split_of`): train / validation / test.",
        "",
        "| split | files | characters | tokens | skipped (undecodable) |",
        "|---|---|---|---|---|",
    ]
    for split in ("train", "validation"):
        if split in s:
            d = s[split]
            lines.append(
                f"| {split} | {d['files']} | {d['chars']:,} | {d.get('tokens', 0):,} | {d['skipped_undecodable']} |"
            )
    lines += [
        "",
        f"Tokenizer: byte-level BPE trained on the train split, {c.vocab_size} entries, digits one per token, "
        "`)` `))` `)))` `))))` single tokens; every file is fed as `<|endoftext|>` + text, so prompts are "
        "tokenized with that token prepended (`prepend_bos=True`).",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| layers / d_model / heads / d_mlp | {c.n_layers} / {c.d_model} / {c.n_heads} / {c.d_mlp} |",
        f"| context | {c.n_ctx} tokens |",
        f"| steps x batch | {r.steps_done} x {c.batch_size} windows = {r.train_tokens_seen:,} tokens "
        f"({r.train_tokens_seen / max(1, s['train'].get('tokens', 1)):.2f} epochs) |",
        f"| optimizer | AdamW (0.9, 0.95), lr {c.lr} warm-up {c.warmup_steps} then cosine to {c.min_lr_ratio}x, "
        f"weight decay {c.weight_decay}, clip {c.grad_clip} |",
        f"| seed | {c.seed} |",
        f"| wall time | {r.wall_seconds / 60:.1f} min on {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) |",
        "",
        "## Validation loss (nats/token, same positions)",
        "",
    ]
    if r.val_loss is not None and r.bigram is not None:
        lines += [
            "| model | loss |",
            "|---|---|",
            f"| {name} | {r.val_loss:.4f} |",
            f"| interpolated bigram (counts from train, lambda {r.bigram['lambda']}) | {r.bigram['loss']:.4f} |",
            f"| add-one unigram | {r.bigram['unigram_loss']:.4f} |",
            "",
            f"on {r.bigram['tokens']:,} validation tokens (non-overlapping {c.n_ctx}-token windows).",
        ]
    if r.val_sample:
        lines += [
            "",
            f"On a fixed sample of {r.val_sample['windows']} evenly spaced windows of those "
            f"({r.val_sample['tokens']:,} tokens; `codecircuits.training.sample_loss`): {r.val_sample['loss']:.4f}.",
        ]
    if r.losses:
        marks = sorted({0, len(r.losses) // 4, len(r.losses) // 2, 3 * len(r.losses) // 4, len(r.losses) - 1})
        curve = ", ".join(f"step {r.losses[i][0]}: {r.losses[i][1]:.2f}" for i in marks)
        lines += ["", f"Training loss (mean over the preceding logging interval): {curve}."]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    lines += [
        "",
        "Reproduce: `" + " ".join(["codecircuits train --arch neox --out DIR", *_cli_flags(c)]) + "`",
        "",
    ]
    return "\n".join(lines)


def _cli_flags(c: TrainConfig) -> list[str]:
    default = TrainConfig()
    flags = []
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if f.name in ("arch",) or v == getattr(default, f.name):
            continue
        flags.append(f"--{f.name.replace('_', '-')} {v}")
    return flags
