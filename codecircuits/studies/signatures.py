"""Study: weight signatures of real code shifts (Cai et al.'s robust weight signatures, carried to code LMs).

From the base model, three brief fine-tunes of the same weights (by default every layer's MLP output weights)
on the same standard-library files: clean (the standard task vector ``a``), re-indented with tabs, and with
local names renamed minifier-style. Each shift's signature is its task vector minus the projection on ``a``, per
tensor. The study measures

- clean versus shifted held-out loss of the base model patched with ``alpha * signature``, across alpha;
- whether signatures are discriminative (a tabs signature helps tabs, not renaming) and compose (tabs + rename on
  code with both shifts);
- where in depth the signature's norm sits, and the cosine of each shift's task vector with ``a`` per layer;
- the storage of a signature (all layers, or only the shallow third) against a full weight copy.

>>> study = run(load_model("smollm2-135m"), SignatureConfig(steps=10))
>>> html, js = study.save("reports/signatures")
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .. import corpus as corpus_mod
from .. import signatures as S
from ..errors import InputError
from .common import Study, configure, json_safe, setting

SHIFTS = {"tabs": S.tabs_for_spaces, "rename": S.rename_locals}
PAPER = (
    "Cai et al. (ICML 2023), on VGG/ResNet under image corruptions: robust and standard weights differ mostly in "
    "shallow layers; a signature patched into a clean model with alpha trades clean for corrupted accuracy; "
    "signatures are discriminative across corruption types, compose by summation, and are up to 13x smaller "
    "than a full weight copy."
)


@dataclass(frozen=True)
class SignatureConfig:
    """Settings of the study; the command line's options are generated from these fields."""

    shifts: tuple[str, ...] = setting(("tabs", "rename"), "code shifts: tabs, rename (comma-separated)")
    kind: str = setting("mlp_out", "weights to fine-tune: mlp_out, mlp, attn or block")
    layers: tuple[int, ...] | None = setting(None, "layers to fine-tune, e.g. 0-9 or 0,3,6 (none: all)", convert="layer_list")
    steps: int = setting(20, "fine-tuning steps per task vector")
    lr: float = setting(1e-3, "Adam learning rate")
    batch_size: int = setting(4, "fine-tuning batch size")
    seq_len: int = setting(96, "tokens per training and evaluation chunk")
    train_chunks: int = setting(64, "training chunks of seq-len tokens per fine-tune")
    eval_chunks: int = setting(6, "held-out chunks of seq-len tokens per evaluation set")
    alphas: tuple[float, ...] = setting((0.0, 0.5, 1.0, 1.5), "alphas to patch the signatures with (comma-separated)")
    seed: int = setting(0, "seed of data order and initialisation")


@dataclass(frozen=True)
class SignatureStudy(Study):
    """The patched models' losses, the per-layer profile, storage and the fine-tunes' curves."""

    model: str
    losses: pd.DataFrame  # one row per patched model: name, alpha, and a loss column per evaluation set
    profile: pd.DataFrame  # per layer: norms of task vectors and signatures, cosines with the standard one
    storage: dict
    finetunes: dict  # name -> loss curve and settings
    settings: dict = field(default_factory=dict)
    config: SignatureConfig | None = None

    def report(self):
        """The study as a :class:`codecircuits.report.Report`."""
        return report(self)

    def to_dataframe(self) -> pd.DataFrame:
        return self.losses

    def top(self, k: int = 5) -> pd.DataFrame:
        """The layers where the signatures' norm is largest."""
        cols = [c for c in self.profile.columns if c.startswith("norm_sig_")]
        return self.profile.assign(norm_sig=self.profile[cols].sum(axis=1)).nlargest(k, "norm_sig")

    def loss(self, name: str, alpha: float, dataset: str) -> float:
        df = self.losses
        row = df[(df.model == name) & (df.alpha.sub(alpha).abs() < 1e-9)]
        if row.empty:
            raise KeyError(f"no row for {name} at alpha {alpha}")
        return float(row.iloc[0][dataset])

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for ds in self.settings["datasets"]:
            out[f"base_{ds}"] = self.loss("base", 0.0, ds)
        for shift in self.settings["shifts"]:
            a1 = self.loss(f"sig_{shift}", 1.0, shift)
            out[f"sig_{shift}_alpha1_{shift}"] = a1
            out[f"sig_{shift}_alpha1_clean"] = self.loss(f"sig_{shift}", 1.0, "clean")
            out[f"ft_{shift}_{shift}"] = self.loss(f"ft_{shift}", 1.0, shift)
            out[f"{shift}_gain_signature"] = out[f"base_{shift}"] - a1
            out[f"{shift}_gain_finetune"] = out[f"base_{shift}"] - out[f"ft_{shift}_{shift}"]
        if "both" in self.settings["datasets"] and len(self.settings["shifts"]) > 1:
            out["composed_both"] = self.loss("composed", 1.0, "both")
            out["composed_clean"] = self.loss("composed", 1.0, "clean")
        p = self.profile
        for shift in self.settings["shifts"]:
            col = p[f"norm_sig_{shift}"]
            n = len(col)
            out[f"sig_{shift}_norm_share_first_third"] = float(
                col.iloc[: max(1, n // 3)].pow(2).sum() / col.pow(2).sum()
            )
            out[f"sig_{shift}_norm_share_last_third"] = float(
                col.iloc[-max(1, n // 3) :].pow(2).sum() / col.pow(2).sum()
            )
        out.update({k: float(v) for k, v in self.storage.items() if isinstance(v, (int, float))})
        return json_safe(out)

    def to_json(self) -> dict:
        return json_safe(
            {
                "model": self.model,
                "settings": self.settings,
                "metrics": self.metrics(),
                "losses": self.losses.to_dict("records"),
                "profile": self.profile.to_dict("records"),
                "storage": self.storage,
                "finetunes": self.finetunes,
            }
        )


def shifted_texts(texts: list[str], shift: str) -> list[str]:
    if shift == "both":
        return [S.tabs_for_spaces(S.rename_locals(t)) for t in texts]
    if shift == "clean":
        return list(texts)
    if shift not in SHIFTS:
        raise InputError(f"Unknown shift {shift!r}; choose from {', '.join(SHIFTS)}.")
    return [SHIFTS[shift](t) for t in texts]


def code_snippets(split: str, n_chars: int, seed: int) -> list[str]:
    """Top-level functions and classes of standard-library files of ``split`` (seeded order) that both shifts
    change, up to ``n_chars``: code with indentation and local names, not licence headers and imports."""
    import ast

    files = list(corpus_mod.stdlib(split))
    random.Random(seed).shuffle(files)
    out, total = [], 0
    for f in files:
        try:
            tree = ast.parse(f.text)
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            seg = ast.get_source_segment(f.text, node)
            if not seg or len(seg) < 200 or len(seg) > 6000 or "    " not in seg or S.rename_locals(seg) == seg:
                continue
            out.append(seg + "\n")
            total += len(seg)
        if total >= n_chars:
            break
    if not out:
        raise InputError(f"No functions or classes found in stdlib:{split}.")
    return out


def run(model, config: SignatureConfig | None = None, *, progress: bool = True, **overrides) -> SignatureStudy:
    """Fine-tune the ``kind`` weights of ``layers`` (default: all) briefly on clean and on shifted code, extract
    the shifts' signatures and measure them. The model's weights are restored at the end. ``config`` defaults to
    :class:`SignatureConfig`; keyword ``overrides`` change single settings."""
    cfg = configure(SignatureConfig, config, overrides)
    shifts, kind, steps, lr, batch_size = tuple(cfg.shifts), cfg.kind, cfg.steps, cfg.lr, cfg.batch_size
    layers = None if cfg.layers is None else list(cfg.layers)
    seq_len, train_chunks, eval_chunks, alphas, seed = (
        cfg.seq_len,
        cfg.train_chunks,
        cfg.eval_chunks,
        tuple(cfg.alphas),
        cfg.seed,
    )
    t0 = time.perf_counter()
    for s in shifts:
        if s not in SHIFTS:
            raise InputError(f"Unknown shift {s!r}; choose from {', '.join(SHIFTS)}.")
    params = S.block_params(model, layers, kind)
    n_layers = model.cfg.n_layers
    chars = train_chunks * seq_len * 4
    train = code_snippets("train", chars, seed)
    held = code_snippets("validation", eval_chunks * seq_len * 5, seed)
    datasets = ["clean", *shifts] + (["both"] if len(shifts) > 1 else [])
    train_toks = {
        name: S.make_batches(model, shifted_texts(train, name), seq_len=seq_len, n=train_chunks)
        for name in ["clean", *shifts]
    }
    evals = {
        name: S.make_batches(model, shifted_texts(held, name), seq_len=seq_len, n=eval_chunks) for name in datasets
    }

    runs = {}
    for i, name in enumerate(["clean", *shifts]):
        runs[name] = S.finetune(
            model,
            train_toks[name],
            params,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed + i,
            name=f"finetune {name}",
            progress=progress,
        )
    std = runs["clean"].task_vector
    sigs = {s: S.signature(runs[s].task_vector, std, name=f"{s} signature") for s in shifts}

    def losses(name, alpha, sets):
        return {
            "model": name,
            "alpha": alpha,
            **{d: S.lm_loss(model, evals[d]) if d in sets else math.nan for d in datasets},
        }

    rows = [losses("base", 0.0, datasets)]
    with S.patched(model, std):
        rows.append(losses("ft_clean", 1.0, datasets))
    for s in shifts:
        with S.patched(model, runs[s].task_vector):
            rows.append(losses(f"ft_{s}", 1.0, datasets))
    from tqdm.auto import tqdm

    for s in shifts:
        for a in tqdm(alphas, desc=f"alpha {s}", disable=not progress):
            if a == 0.0:  # the base model
                rows.append({**rows[0], "model": f"sig_{s}"})
                continue
            with S.patched(model, sigs[s], a):
                sets = datasets if a == 1.0 else ["clean", s]
                rows.append(losses(f"sig_{s}", float(a), sets))
    if len(shifts) > 1:
        with S.patched(model, [sigs[s] for s in shifts], 1.0):
            rows.append(losses("composed", 1.0, datasets))
    # the signature of the shallow third only
    shallow = list(range(max(1, n_layers // 3)))
    for s in shifts:
        with S.patched(model, sigs[s].restrict(shallow), 1.0):
            rows.append(losses(f"sig_{s}_shallow", 1.0, ["clean", s]))
    df = pd.DataFrame(rows)

    prof = {"layer": list(range(n_layers))}
    for name, r in runs.items():
        prof[f"norm_tv_{name}"] = [r.task_vector.norm_profile().get(i, 0.0) for i in range(n_layers)]
    for s, sig in sigs.items():
        prof[f"norm_sig_{s}"] = [sig.norm_profile().get(i, 0.0) for i in range(n_layers)]
        cos = {}
        for tname, c in sig.cosines.items():
            cos.setdefault(int(tname.split(".")[1]), []).append(c)
        prof[f"cos_{s}_clean"] = [sum(cos[i]) / len(cos[i]) if i in cos else math.nan for i in range(n_layers)]
    profile = pd.DataFrame(prof)

    full = S.full_copy_bytes(model)
    first = next(iter(sigs.values()))
    storage = {
        "full_copy_mb": full / 2**20,
        "signature_mb": first.storage_bytes() / 2**20,
        "signature_fp16_mb": first.storage_bytes(torch.float16) / 2**20,
        "signature_shallow_mb": first.restrict(shallow).storage_bytes() / 2**20,
        "ratio_full_to_signature": full / first.storage_bytes(),
        "ratio_full_to_signature_shallow": full / first.restrict(shallow).storage_bytes(),
        "ratio_full_to_signature_fp16": full / first.storage_bytes(torch.float16),
    }
    finetunes = {
        name: {"losses": [round(x, 4) for x in r.losses], "seconds": round(r.seconds, 1), **r.settings}
        for name, r in runs.items()
    }
    settings = dict(
        shifts=list(shifts),
        datasets=datasets,
        kind=kind,
        layers="all" if layers is None else list(layers),
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seq_len=seq_len,
        train_tokens=int(train_toks["clean"].numel()),
        tokens_seen_per_finetune=steps * batch_size * seq_len,
        eval_tokens=int(evals["clean"].numel()),
        trained_params=sum(p.numel() for p in params.values()),
        alphas=list(alphas),
        shallow_layers=f"0..{shallow[-1]}",
        seed=seed,
        seconds=round(time.perf_counter() - t0, 1),
    )
    return SignatureStudy(str(model.cfg.model_name), df, profile, storage, finetunes, settings, cfg)


def report(study: SignatureStudy):
    from ..report import Report

    s = study.settings
    r = Report(
        title=f"Weight signatures of code shifts on {study.model}",
        subtitle=f"shifts: {', '.join(s['shifts'])}; {s['steps']} fine-tuning steps of {s['batch_size']}x{s['seq_len']} "
        f"tokens on the {s['kind']} weights ({s['trained_params'] / 1e6:.1f}M parameters)",
    )
    r.section("Key numbers", text=PAPER)
    r.metrics(study.metrics())
    r.section(
        "Clean versus shifted loss across alpha",
        text="Held-out next-token loss of the base model patched with alpha x signature (alpha 0 = base).",
    )
    df = study.losses
    for shift in s["shifts"]:
        g = df[df.model == f"sig_{shift}"].sort_values("alpha")
        g = g.drop_duplicates("alpha")
        r.line_chart(
            x=[float(a) for a in g.alpha],
            series={"clean": [float(v) for v in g.clean], shift: [float(v) for v in g[shift]]},
            title=f"{shift} signature",
            x_title="alpha",
            y_title="loss (nats/token)",
        )
    r.table(df.round(4), caption="losses per patched model (NaN: not evaluated)")
    r.section(
        "Where in depth",
        text="Per layer: norm of each task vector and signature, and the cosine of each shift's task vector with "
        "the clean (standard) one.",
    )
    p = study.profile
    cols = [c for c in p.columns if c.startswith(("norm_sig_", "norm_tv_"))]
    r.line_chart(
        x=list(p.layer),
        series={c: [float(v) for v in p[c]] for c in cols},
        title="norm by layer",
        x_title="layer",
        y_title="L2 norm",
    )
    r.table(p.round(5), caption="norm and cosine profile by layer")
    r.section("Storage", text="A signature of the chosen weights against a full copy of the model's weights.")
    r.table(pd.DataFrame([study.storage]).round(3), caption="sizes in MiB")
    r.data(study.to_json(), name="results")
    return r


def write(study: SignatureStudy, out_dir) -> tuple[Path, Path]:
    """``study.save(out_dir)``: ``report.html`` and ``results.json`` (the same numbers) under ``out_dir``."""
    return study.save(out_dir)
