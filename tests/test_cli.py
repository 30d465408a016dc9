from __future__ import annotations

import json

import pytest

from codecircuits.cli import main


def test_help(capsys):
    assert main([]) == 0
    assert "models" in capsys.readouterr().out


def test_models_lists_registry_with_availability(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"smollm2-135m", "cc-py-neox", "codellama-7b", "santacoder", "starcoder2-3b"} <= names
    assert all(r["available"] for r in rows)


def test_describe_directory(tiny_dirs, capsys):
    assert main(["describe", str(tiny_dirs["qwen2"])]) == 0
    out = capsys.readouterr().out
    assert "grouped-query" in out and "kv0: q0,1" in out


def test_cli_error_is_one_line(capsys):
    assert main(["describe", "no-such-model"]) == 2
    assert "Unknown model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# each study's defaults live in its config; the command passes only the options given

STUDY_COMMANDS = ["parens", "subspace", "cna", "memories", "languages", "repair", "signatures", "circuit", "demo"]
# keywords that are the command line's own business (where files go, progress bars), not the study's settings
CLI_KEYWORDS = {"checkpoint", "resume", "progress", "workers", "out_dir"}


class _Stop(Exception):
    pass


def _capture(monkeypatch, command):
    """Run ``codecircuits COMMAND ...`` up to the study call; returns a function of the argv -> (args, kwargs)."""
    import importlib

    import codecircuits.models as models

    study = importlib.import_module(f"codecircuits.studies.{'parens' if command == 'demo' else command}")
    seen = {}

    def fake_run(model, *args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise _Stop

    monkeypatch.setattr(models, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(study, "run", fake_run)

    def call(*options):
        seen.clear()
        with pytest.raises(_Stop):
            main([command, *options])
        return seen["args"], seen["kwargs"]

    return study, call


CONFIGS = {
    "parens": "ParensConfig",
    "demo": "ParensConfig",
    "subspace": "SubspaceConfig",
    "cna": "CNAConfig",
    "memories": "MemoriesConfig",
    "languages": "LanguagesConfig",
    "repair": "RepairConfig",
    "signatures": "SignatureConfig",
    "circuit": "CircuitConfig",
}


@pytest.mark.parametrize("command", STUDY_COMMANDS)
def test_study_command_defaults_are_the_study_config(monkeypatch, command):
    study, call = _capture(monkeypatch, command)
    args, kwargs = call()
    cfg_cls = getattr(study, CONFIGS[command])
    (cfg,) = args
    assert cfg == cfg_cls(), f"`codecircuits {command}` runs {cfg}, the library's default is {cfg_cls()}"
    assert set(kwargs) <= CLI_KEYWORDS, f"`codecircuits {command}` passes settings outside the config: {kwargs}"
    assert kwargs.get("workers") is None, "without --workers / --ray a command runs in one process"


@pytest.mark.parametrize("command", ["memories", "languages", "cna", "circuit"])
def test_workers_options_reach_the_study(monkeypatch, command):
    """`--workers N` hands the study N local Ray workers, `--ray ADDRESS` the workers of a running cluster."""
    from codecircuits.distributed import Workers

    _, call = _capture(monkeypatch, command)
    _, kw = call("--workers", "2", "--worker-threads", "3")
    w = kw["workers"]
    assert isinstance(w, Workers) and (w.n, w.address, w.threads) == (2, None, 3)
    _, kw = call("--ray", "ray://head:10001")
    assert (kw["workers"].n, kw["workers"].address) == (None, "ray://head:10001")


@pytest.mark.parametrize("command", [c for c in STUDY_COMMANDS if c != "demo"])
def test_every_config_setting_has_an_option(command):
    """The command line is generated from the config: each setting (except library-only ones) has an option."""
    import dataclasses
    import importlib

    from codecircuits.cli import build_parser

    study = importlib.import_module(f"codecircuits.studies.{command}")
    cfg_cls = getattr(study, CONFIGS[command])
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if hasattr(a, "choices")).choices[command]
    dests = {a.dest for a in sub._actions}
    for f in dataclasses.fields(cfg_cls):
        if f.metadata.get("cli", True):
            assert f.name in dests, f"{cfg_cls.__name__}.{f.name} has no option in `codecircuits {command}`"


def test_study_command_options_reach_the_study(monkeypatch):
    study, call = _capture(monkeypatch, "parens")
    (cfg,), _ = call("--prompts-per-n", "24", "--no-mined")
    assert cfg == study.ParensConfig(prompts_per_n=24, mined=False)
    study, call = _capture(monkeypatch, "cna")
    (cfg,), _ = call("--templates", "assert, comment", "--no-parens", "--n-sweep", "3")
    assert cfg == study.CNAConfig(templates=("assert", "comment"), paren_n_values=(), n_sweep=3)
    study, call = _capture(monkeypatch, "memories")
    (cfg,), kw = call("--max-tokens", "0", "--edit", "keyword,string", "--top-k", "5", "--quiet")
    assert cfg.max_tokens is None and cfg.edit == ("keyword", "string") and cfg.k == 5
    assert kw["progress"] is False
    study, call = _capture(monkeypatch, "signatures")
    (cfg,), _ = call("--layers", "0-2,5", "--alphas", "0,1")
    assert cfg.layers == (0, 1, 2, 5) and cfg.alphas == (0.0, 1.0)
    study, call = _capture(monkeypatch, "subspace")
    (cfg,), _ = call("--values", "1,2", "--epochs", "2")
    assert cfg == study.SubspaceConfig(values=(1, 2), epochs=2)
    study, call = _capture(monkeypatch, "repair")
    (cfg,), _ = call("--cases", "3", "--sources", "humaneval")
    assert cfg == study.RepairConfig(n_cases=3, sources=("humaneval",))


def test_unknown_setting_is_explained():
    from codecircuits.errors import InputError
    from codecircuits.studies.cna import CNAConfig
    from codecircuits.studies.common import configure

    with pytest.raises(InputError, match="has no setting n_swep"):
        configure(CNAConfig, None, {"n_swep": 3})


@pytest.mark.parametrize("command", STUDY_COMMANDS)
def test_study_command_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--model" in capsys.readouterr().out
