"""Compile small RASP programs with tracr and save them as TransformerBridge weights.

Run once by hand; the outputs are committed under ``codecircuits/data/tracr/<name>/`` (package data) so that
neither the project nor CI needs tracr or JAX. Two stages, in two interpreters:

1. ``compile`` (an interpreter with ``tracr-pypi``, JAX and Haiku, e.g. a separate venv): compiles each
   program and writes its raw weights and encoders to ``<work>/<name>/raw.npz`` + ``raw.json``, plus
   the outputs of the compiled JAX model on a few inputs (``examples.json``).
2. ``convert`` (the project's venv, with TransformerLens): turns those into ``model.safetensors`` and
   ``config.json`` with ``transformer_lens.utilities.tracr``, and writes ``vocab.json``,
   ``examples.json`` and ``ground_truth.json``.

Regenerate everything (from the repository root; the committed files were made with tracr-pypi 1.0.0, jax
0.10.2, dm-haiku 0.0.17, chex 0.1.92, numpy 2.4.6, and come out byte-identical on a rerun)::

    python3.11 -m venv /work/tracr-venv
    /work/tracr-venv/bin/pip install tracr-pypi==1.0.0 jax==0.10.2 dm-haiku==0.0.17 chex==0.1.92
    .venv/bin/python scripts/compile_tracr.py all --tracr-python /work/tracr-venv/bin/python

Ground truth: tracr writes each RASP variable into its own orthogonal block of the residual stream, so
an edge ``u -> v`` of the graph (input, heads ``a{L}.h{H}``, MLPs ``m{L}``, logits) is true iff u and v
are both used (non-zero weights) and u's writing weights times v's reading weights is non-zero
(``true_edges``; ``carries`` names the residual dimensions each one carries). ``effective_edges`` are the
true edges whose patching alone, from some equal-length corrupted input, changes the logits.
Tracr's layer i (attention, then MLP) is the bridge's block i; an empty slot has zero weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "codecircuits" / "data" / "tracr"
BOS = "BOS"
TOL = 1e-6

# name -> (tracr.compiler.lib recipe, input vocabulary, max_seq_len); compiled in stage 1 only
PROGRAMS = {
    "hist": ("make_hist()", ["a", "b", "c"], 5),
    "reverse": ("make_reverse(rasp.tokens)", ["a", "b", "c"], 5),
    "sort_unique": ("make_sort_unique(rasp.tokens, rasp.tokens)", [1, 2, 3, 4, 5], 5),
    # two selector widths in parallel (two heads in layer 0), then an MLP that combines them
    "count_other": (
        "rasp.SequenceMap(lambda h, n: n - h, make_hist(), make_length()).named('count_other')",
        ["a", "b", "c"],
        5,
    ),
}
EXAMPLE_INPUTS = {
    "hist": [["a"], ["a", "b", "a"], ["c", "c", "c", "c", "c"], ["b", "a", "c", "a"]],
    "reverse": [["a"], ["a", "b", "c"], ["c", "a", "b", "b", "a"], ["b", "a"]],
    "sort_unique": [[3], [2, 1], [5, 3, 1, 4], [4, 2, 5, 1, 3]],
    "count_other": [["a"], ["a", "b", "a"], ["c", "c", "c", "c", "c"], ["b", "a", "c", "a"]],
}


# --- stage 1: tracr (JAX) ---------------------------------------------------------------------


def compile_programs(work: Path) -> None:
    from tracr.compiler import compiling, lib  # noqa: F401  (lib is used by the recipes)
    from tracr.rasp import rasp  # noqa: F401

    scope = {"lib": lib, "rasp": rasp, **{k: getattr(lib, k) for k in dir(lib) if k.startswith("make_")}}
    for name, (recipe, vocab, max_seq_len) in PROGRAMS.items():
        program = eval(recipe, scope)  # noqa: S307  (our own constant recipes)
        model = compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=max_seq_len, compiler_bos=BOS)
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        arrays = {
            f"{module}|{param}": np.asarray(value)
            for module, params in model.params.items()
            for param, value in params.items()
        }
        np.savez(out / "raw.npz", **arrays)
        cfg = model.model_config
        meta = {
            "recipe": recipe,
            "vocab": vocab,
            "max_seq_len": max_seq_len,
            "bos": BOS,
            "output_label": program.label,
            "model_config": {
                "num_heads": cfg.num_heads,
                "num_layers": cfg.num_layers,
                "key_size": cfg.key_size,
                "mlp_hidden_size": cfg.mlp_hidden_size,
                "layer_norm": cfg.layer_norm,
                "causal": cfg.causal,
            },
            "residual_labels": list(model.residual_labels),
            "input_encoding": [[k, int(v)] for k, v in model.input_encoder.encoding_map.items()],
            "output_encoding": [[k, int(v)] for k, v in model.output_encoder.encoding_map.items()],
            "pad": model.input_encoder.pad_token,
        }
        (out / "raw.json").write_text(json.dumps(meta, indent=1))
        examples = []
        for seq in EXAMPLE_INPUTS[name]:
            decoded = model.apply([BOS, *seq]).decoded
            examples.append({"input": seq, "output": list(decoded[1:])})
        (out / "examples.json").write_text(json.dumps(examples))
        print(f"compiled {name}: {cfg.num_layers} layers, {cfg.num_heads} heads, d_model {len(model.residual_labels)}")


# --- stage 2: TransformerLens (project venv) --------------------------------------------------


def _duck_model(raw: dict, meta: dict) -> SimpleNamespace:
    """The attributes of tracr's AssembledTransformerModel that transformer_lens.utilities.tracr reads."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in raw.items():
        module, param = key.split("|")
        params.setdefault(module, {})[param] = value
    encoding = {k: v for k, v in meta["output_encoding"]}
    return SimpleNamespace(
        params=params,
        model_config=SimpleNamespace(**meta["model_config"]),
        residual_labels=meta["residual_labels"],
        output_encoder=SimpleNamespace(encoding_map=encoding),
    )


CONFIG_FIELDS = (
    "n_layers",
    "d_model",
    "d_head",
    "n_ctx",
    "d_vocab",
    "d_vocab_out",
    "d_mlp",
    "n_heads",
    "act_fn",
    "attention_dir",
    "normalization_type",
)


def _readers_writers(raw: dict, n_layers: int, n_heads: int, d_head: int) -> tuple[dict, dict]:
    """Writing weights [*, d_model] of each graph source; reading weights [d_model, *] of each target."""

    def p(module: str, param: str = "w") -> np.ndarray:
        return np.asarray(raw[f"{module}|{param}"], dtype=np.float64)

    writers = {"input": np.concatenate([p("token_embed", "embeddings"), p("pos_embed", "embeddings")])}
    readers: dict[str, np.ndarray] = {}
    for layer in range(n_layers):
        pre = f"transformer/layer_{layer}"
        for head in range(n_heads):
            cols = slice(head * d_head, (head + 1) * d_head)
            writers[f"a{layer}.h{head}"] = p(f"{pre}/attn/linear")[cols]
            for letter, module in (("q", "query"), ("k", "key"), ("v", "value")):
                readers[f"a{layer}.h{head}<{letter}>"] = p(f"{pre}/attn/{module}")[:, cols]
        writers[f"m{layer}"] = p(f"{pre}/mlp/linear_2")
        readers[f"m{layer}"] = p(f"{pre}/mlp/linear_1")
    return readers, writers


def all_edges(n_layers: int, n_heads: int) -> list[str]:
    """Every edge of the graph, in EAP-IG's naming, in topological order of their targets."""
    edges = []
    for layer in range(n_layers):
        sources = ["input"] + [f"a{k}.h{h}" for k in range(layer) for h in range(n_heads)]
        sources += [f"m{k}" for k in range(layer)]
        for head in range(n_heads):
            edges += [f"{s}->a{layer}.h{head}<{q}>" for q in "qkv" for s in sources]
        sources_mlp = sources + [f"a{layer}.h{h}" for h in range(n_heads)]
        edges += [f"{s}->m{layer}" for s in sources_mlp]
    sources = ["input"] + [f"a{k}.h{h}" for k in range(n_layers) for h in range(n_heads)]
    sources += [f"m{k}" for k in range(n_layers)]
    return edges + [f"{s}->logits" for s in sources]


def _carried(labels: list[str], write: np.ndarray, read: np.ndarray) -> list[str]:
    """The residual dimensions (tracr's labels, ``variable:value``) that ``write`` writes and ``read`` reads."""
    dims = (np.abs(write).max(0) > TOL) & (np.abs(read).max(1) > TOL)
    return [labels[d] for d in np.flatnonzero(dims)]


def _source_outputs(bridge, tokens) -> dict:
    """What each source adds to the residual stream ``[batch, pos, d_model]``, from one run of the bridge."""
    import torch

    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    outputs = {"input": cache["blocks.0.hook_resid_pre"]}
    for layer, block in enumerate(bridge.blocks):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        for head in range(bridge.cfg.n_heads):
            outputs[f"a{layer}.h{head}"] = z[:, :, head] @ block.attn.W_O[head]
        outputs[f"m{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
    return {k: v.detach().double().numpy() for k, v in outputs.items()}


def _destination_hook(target: str) -> tuple[str, int | None]:
    """The hook that carries ``target``'s input, and its head index (None: the whole tensor)."""
    if target == "logits":
        return "ln_final.hook_in", None
    if target.startswith("m"):
        return f"blocks.{int(target[1:])}.hook_mlp_in", None
    layer, rest = target[1:].split(".h")
    head, letter = rest.rstrip(">").split("<")
    return f"blocks.{int(layer)}.hook_{letter}_input", int(head)


def effective_edges(name: str, dest: Path, true_edges: list[str], length: int, n_corrupted: int = 16) -> list[str]:
    """The true edges whose patching alone changes the logits for some clean/corrupted pair of ``length``
    tokens: every input of that length as the clean prompt, against ``n_corrupted`` shuffles of them. Patching
    ``u -> v`` adds ``out_u(corrupted) - out_u(clean)`` to v's input only (v's split q/k/v or MLP input)."""
    import torch

    from codecircuits.tracr_models import all_inputs, load_tracr

    bridge, vocab, _ = load_tracr(dest / name)
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_hook_mlp_in(True)
    inputs = all_inputs(name, vocab, length)
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(inputs)) for _ in range(n_corrupted)])
    clean = vocab.encode([inputs[i % len(inputs)] for i in range(len(order))])
    corrupted = vocab.encode([inputs[i] for i in order])
    out_clean, out_corr = _source_outputs(bridge, clean), _source_outputs(bridge, corrupted)
    with torch.no_grad():
        base = bridge(clean)
    effective = []
    for edge in true_edges:
        source, target = edge.split("->")
        delta = torch.tensor(out_corr[source] - out_clean[source], dtype=base.dtype)
        hook, head = _destination_hook(target)

        def patch(act, hook=None, head=head, delta=delta):
            if head is None:
                return act + delta
            act = act.clone()
            act[:, :, head] += delta
            return act

        with torch.no_grad(), bridge.hooks(fwd_hooks=[(hook, patch)]):
            logits = bridge(clean)
        if (logits - base).abs().max().item() > 1e-3:
            effective.append(edge)
    return effective


def ground_truth(raw: dict, unembed: np.ndarray, cfg: dict, labels: list[str]) -> dict:
    n_layers, n_heads, d_head = cfg["n_layers"], cfg["n_heads"], cfg["d_head"]
    readers, writers = _readers_writers(raw, n_layers, n_heads, d_head)
    readers["logits"] = np.asarray(unembed, dtype=np.float64)  # [d_model, d_vocab_out]

    def used(name: str) -> bool:
        if name in ("input", "logits"):
            return True
        if name.startswith("m"):
            return np.abs(writers[name]).max() > TOL and np.abs(readers[name]).max() > TOL
        reads = max(np.abs(readers[f"{name}<{q}>"]).max() for q in "qkv")
        return np.abs(writers[name]).max() > TOL and reads > TOL

    edges = all_edges(n_layers, n_heads)
    true_edges, carries = [], {}
    for edge in edges:
        source, target = edge.split("->")
        component = target.split("<")[0]
        if used(source) and used(component):
            if np.abs(writers[source] @ readers[target]).max() > TOL:
                true_edges.append(edge)
                carries[edge] = _carried(labels, writers[source], readers[target])
    heads = [f"a{k}.h{h}" for k in range(n_layers) for h in range(n_heads) if used(f"a{k}.h{h}")]
    mlps = [f"m{k}" for k in range(n_layers) if used(f"m{k}")]
    return {
        "heads": heads,
        "mlps": mlps,
        "true_edges": true_edges,
        "n_edges": len(edges),
        "all_edges": edges,
        "carries": carries,
        "rule": "u->v is true iff u, v have non-zero weights and |W_write(u) @ W_read(v)|.max() > 1e-6",
    }


def convert(work: Path, dest: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformer_lens.utilities.tracr import (
        make_tracr_transformer_bridge_config,
        make_tracr_transformer_bridge_state_dict,
    )

    sys.path.insert(0, str(ROOT))
    from codecircuits.tracr_models import PAIR_LENGTH

    for name in PROGRAMS:
        src = work / name
        meta = json.loads((src / "raw.json").read_text())
        with np.load(src / "raw.npz") as npz:
            raw = {k: npz[k] for k in npz.files}
        model = _duck_model(raw, meta)
        bridge_cfg = make_tracr_transformer_bridge_config(model)
        config = {field: getattr(bridge_cfg, field) for field in CONFIG_FIELDS}
        state = make_tracr_transformer_bridge_state_dict(model, meta["output_label"], dtype=torch.float32)
        out = dest / name
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        vocab = {
            "program": meta["recipe"],
            "bos": meta["bos"],
            "pad": meta["pad"],
            "max_seq_len": meta["max_seq_len"],
            "input_tokens": meta["vocab"],
            "input": meta["input_encoding"],
            "output": meta["output_encoding"],
            "output_label": meta["output_label"],
        }
        (out / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
        shutil.copy(src / "examples.json", out / "examples.json")
        truth = ground_truth(raw, state["head.weight"].T.numpy(), config, meta["residual_labels"])
        length = PAIR_LENGTH[name]  # tokens per input of tracr_pairs
        truth["pair_length"] = length
        truth["effective_edges"] = effective_edges(name, dest, truth["true_edges"], length)
        truth["effective_rule"] = (
            f"true edges whose patching alone (v's input gets out_u(corrupted) - out_u(clean)) changes the logits "
            f"by > 1e-3 for some pair of {length}-token inputs (every input against 16 shuffles): the part of the "
            "circuit that equal-length clean/corrupted pairs can see"
        )
        (out / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
        print(
            f"{name}: heads {truth['heads']}, mlps {truth['mlps']}, {len(truth['true_edges'])}/{truth['n_edges']} "
            f"true edges, {len(truth['effective_edges'])} effective at length {length}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["compile", "convert", "all"])
    parser.add_argument("--work", type=Path, help="folder for the raw weights (default: a temporary one)")
    parser.add_argument("--dest", type=Path, default=DATA)
    parser.add_argument("--tracr-python", default="/work/tracr-venv/bin/python", help="interpreter with tracr")
    args = parser.parse_args()
    if args.stage != "all" and args.work is None:
        parser.error(f"the {args.stage} stage needs --work, the folder of the raw weights")
    if args.stage == "compile":
        compile_programs(args.work)
    elif args.stage == "convert":
        convert(args.work, args.dest)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            subprocess.run([args.tracr_python, __file__, "compile", "--work", str(work)], check=True)
            convert(work, args.dest)


if __name__ == "__main__":
    sys.exit(main())
