"""Benchmark: activation-patching sweeps, ``transformer_lens.patching`` against :func:`codecircuits.patching.sweep`.

On ``smollm2-135m`` with 8 closing-paren pairs (clean ``#print the string N\\nprint(str(str(N`` whose answer is
``)))``, corrupted ``...print(str+str(N`` whose answer is ``))``; 19 tokens, first difference at position 13) and
the metric ``logit[)))] - logit[))]`` at the last position, it times three sweeps in one run:

- ``resid_pre`` by (layer, pos)                    -- TL: ``get_act_patch_resid_pre``
- head outputs ``z`` by (layer, head), all positions -- TL: ``get_act_patch_attn_head_out_all_pos``
- head outputs ``z`` by (layer, pos, head)          -- TL: ``get_act_patch_attn_head_out_by_pos``

For each it prints both times, the ratio, the largest difference between the results, the ideal ratio (TL's
layer-position evaluations over those a patch can change: the speed-up of an implementation that recomputes
nothing else) and our ratio as a fraction of it; then attribution patching's time for all cells and its Spearman
correlation with the exact sweep.

TL's (layer, pos, head) sweep is 5,130 full forwards (~20 minutes on an idle core); unless ``CC_BENCH_FULL=1`` it
is timed on random cells (2 per layer) through the same TL code path (``generic_activation_patch`` with an
``index_df``, one full forward per cell) and extrapolated by cell count, which is exact for a loop of identical
forwards; the output says so. ``CC_BENCH_SAMPLE=1`` does the same for all three sweeps (for a loaded machine).
``main(quick=True)`` runs everything on a tiny random Llama in seconds.
"""

from __future__ import annotations

import os
import time

import torch

NUMS = [123, 457, 281, 905, 346, 718, 562, 834]


def pairs(model, nums=NUMS) -> tuple[list[str], list[str]]:
    clean = [f"#print the string {n}\nprint(str(str({n}" for n in nums]
    corrupted = [f"#print the string {n}\nprint(str+str({n}" for n in nums]
    return clean, corrupted


def _timed(fn):
    """``(result, seconds)``: CPU seconds of this process, which on a shared machine do not depend on how busy the
    other cores are (the benchmark runs on one thread); wall-clock seconds on a GPU."""
    clock = time.perf_counter if torch.cuda.is_available() else time.process_time
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = clock()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, clock() - t0


def main(quick: bool = False, full: bool | None = None, sample: bool | None = None, per_layer: int = 2) -> dict:
    from transformer_lens import patching as tlp

    from codecircuits import attribution, load_model, patching
    from codecircuits.core.batching import paired_tokens
    from codecircuits.core.inputs import single_token_id
    from codecircuits.testing import tiny_model

    full = bool(int(os.environ.get("CC_BENCH_FULL", "0"))) if full is None else full
    sample = bool(int(os.environ.get("CC_BENCH_SAMPLE", "0"))) if sample is None else sample
    torch.set_num_threads(1)
    if quick:
        model = tiny_model("llama", n_layers=3)
        clean_p, corr_p = pairs(model, NUMS[:4])
        name = "tiny-llama (3 layers)"
    else:
        model = load_model("smollm2-135m", device="cuda" if torch.cuda.is_available() else "cpu")
        clean_p, corr_p = pairs(model)
        name = "smollm2-135m"
    clean, corr = paired_tokens(model, clean_p, corr_p)
    right, wrong = single_token_id(model, ")))"), single_token_id(model, "))")

    def metric(logits):
        return logits[:, -1, right] - logits[:, -1, wrong]

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    tl_tqdm, tlp.tqdm = tlp.tqdm, lambda it, *a, **k: it  # TL's per-cell progress bar would flood the output
    n_layers, n_heads, n_pos = model.cfg.n_layers, model.cfg.n_heads, clean.shape[1]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Activation patching on {name}: {clean.shape[0]} pairs x {n_pos} tokens, first difference at position "
        f"{patching.first_difference(clean, corr)}; {n_layers} layers x {n_heads} heads; "
        f"{torch.get_num_threads()} thread(s), load average {load:.1f} on {os.cpu_count()} CPUs; "
        f"times are {'wall-clock' if torch.cuda.is_available() else 'CPU'} seconds"
    )
    sweeps = [
        ("resid_pre (layer x pos)", "resid_pre", ("layer", "pos"), tlp.get_act_patch_resid_pre, None),
        ("z (layer x head)", "z", ("layer", "head"), tlp.get_act_patch_attn_head_out_all_pos, None),
        ("z (layer x pos x head)", "z", ("layer", "pos", "head"), tlp.get_act_patch_attn_head_out_by_pos, "sample"),
    ]
    out: dict = {"model": name, "pairs": int(clean.shape[0]), "tokens": int(n_pos), "sweeps": {}}
    for label, site, by, tl_fn, mode in sweeps:
        ours, t_ours = _timed(
            lambda site=site, by=by: patching.sweep(model, clean, corr, metric, site=site, by=by, progress=False)
        )
        work = patching.work(model, clean, corr, site=site, by=by)
        sampled = not full and not quick and (mode == "sample" or sample)
        if sampled:
            import pandas as pd

            g = torch.Generator().manual_seed(0)
            rows = []
            axes = ["layer", "pos", "head_index"][: len(by)]
            for layer in range(n_layers):  # cells per layer, positions and heads drawn at random
                for _ in range(per_layer):
                    p = int(torch.randint(n_pos, (1,), generator=g))
                    h = int(torch.randint(n_heads, (1,), generator=g))
                    rows.append((layer, p, h) if by == ("layer", "pos", "head") else (layer, p if site != "z" else h))
            index_df = pd.DataFrame(rows, columns=axes)
            setter = {
                ("layer", "pos"): tlp.layer_pos_patch_setter,
                ("layer", "head"): tlp.layer_head_vector_patch_setter,
                ("layer", "pos", "head"): tlp.layer_pos_head_vector_patch_setter,
            }[by]
            ref, t_sample = _timed(
                lambda: tlp.generic_activation_patch(
                    model,
                    corr,
                    clean_cache,
                    metric,
                    patch_setter=setter,  # noqa: B023 (called at once, inside this iteration)
                    activation_name=site,  # noqa: B023
                    index_df=index_df,  # noqa: B023
                    reduce="mean",
                )
            )
            t_tl = t_sample * work["cells"] / len(rows)
            mine = ours.values[tuple(torch.tensor(index_df[a].tolist()) for a in axes)]
            diff = (mine - ref).abs().max().item()
            tl_note = (
                f"(TL's generic_activation_patch on {len(rows)} random cells: {t_sample:.1f} s, "
                f"extrapolated to all {work['cells']})"
            )
        else:
            ref, t_tl = _timed(lambda tl_fn=tl_fn: tl_fn(model, corr, clean_cache, metric, reduce="mean"))
            diff = (ours.values - ref).abs().max().item()
            tl_note = f"({work['cells']} full forwards)"
        est, t_attr = _timed(
            lambda site=site, by=by, ours=ours: attribution.sweep(
                model, clean, corr, metric, site=site, by=by, exact=ours, progress=False
            )
        )
        ratio = t_tl / t_ours
        row = {
            "tl_s": t_tl,
            "tl_extrapolated": sampled,
            "ours_s": t_ours,
            "ratio": ratio,
            "max_abs_diff": diff,
            "ideal_ratio": work["ideal_ratio"],
            "fraction_of_ideal": ratio / work["ideal_ratio"],
            "attribution_s": t_attr,
            "attribution_spearman": est.rank_correlation,
            "cells": work["cells"],
        }
        out["sweeps"][label] = row
        print(
            f"  {label}\n"
            f"    transformer_lens   {t_tl:8.2f} s  {tl_note}\n"
            f"    codecircuits       {t_ours:8.2f} s\n"
            f"    ratio              {ratio:8.1f} x   (ideal {work['ideal_ratio']:.1f} x: we reach "
            f"{100 * ratio / work['ideal_ratio']:.0f}% of it)\n"
            f"    max |ours - TL|    {diff:.2e}\n"
            f"    attribution        {t_attr:8.2f} s for all {work['cells']} cells, Spearman vs exact "
            f"{est.rank_correlation:.3f}",
            flush=True,
        )
    tlp.tqdm = tl_tqdm
    return out


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv, full="--full" in sys.argv or None, sample="--sample" in sys.argv or None)
