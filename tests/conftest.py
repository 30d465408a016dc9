"""Shared fixtures: the architecture test matrix of tiny random models (no downloads)."""

from __future__ import annotations

import pytest

from codecircuits.testing import FAMILIES, PAIR_CLEAN, PAIR_CORRUPTED, save_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> directory of a saved tiny random model (with tokenizer)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {fam: save_tiny_model(fam, root / fam) for fam in FAMILIES}


_MODELS: dict = {}


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def tiny(family, tiny_dirs):
    """The tiny model of ``family``, loaded through load_model (cached for the session)."""
    from codecircuits import load_model

    if family not in _MODELS:
        _MODELS[family] = load_model(tiny_dirs[family], device="cpu")
    return _MODELS[family]


@pytest.fixture(scope="session")
def default_model():
    """The real default model (smollm2-135m); tests using it are marked slow."""
    from codecircuits import load_model

    if "default" not in _MODELS:
        _MODELS["default"] = load_model("smollm2-135m", device="cpu")
    return _MODELS["default"]


@pytest.fixture(autouse=True)
def _threads(request):
    """One torch thread for tiny-model tests (thread start-up costs more than it saves on tiny tensors);
    all cores for the slow tests that run the real default model."""
    import torch

    before = torch.get_num_threads()
    want = before if request.node.get_closest_marker("slow") else 1
    torch.set_num_threads(want)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pair():
    """``pair(model) -> (clean, corrupted, clean_cache)``: the shared prompt pair as tokens, with the clean cache."""
    from codecircuits import patching

    cache = {}

    def get(model):
        if id(model) not in cache:
            clean, corr = model.to_tokens(list(PAIR_CLEAN)), model.to_tokens(list(PAIR_CORRUPTED))
            assert clean.shape == corr.shape, "test prompts must tokenize to equal lengths"
            assert patching.first_difference(clean, corr) > 1
            _, clean_cache = model.run_with_cache(clean)
            cache[id(model)] = clean, corr, clean_cache
        return cache[id(model)]

    return get


@pytest.fixture(scope="session")
def ray_workers():
    """Two Ray workers of one thread each on a local cluster (127.0.0.1), shared by the sharded-job tests."""
    import os

    if os.environ.get("CI"):  # CI installs the lock, which has Ray: a missing Ray fails there, never skips
        import ray  # noqa: F401
    else:
        pytest.importorskip("ray", reason="the distributed extra (Ray) is not installed")
    from codecircuits.distributed import Workers

    w = Workers(2, threads=1)
    w.start()
    yield w
    w.close()
