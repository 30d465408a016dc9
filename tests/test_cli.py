from __future__ import annotations

import inspect
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

STUDY_COMMANDS = ["parens", "subspace", "cna", "memories", "repair", "signatures", "demo"]
# keywords that are the command line's own business (where files go, progress bars), not the study's settings
CLI_KEYWORDS = {"checkpoint", "resume", "progress"}


class _Stop(Exception):
    pass


def _capture(monkeypatch, command):
    """Run ``codecircuits COMMAND ...`` up to the study call; returns a function of the argv -> (args, kwargs)."""
    import importlib

    import codecircuits.models as models

    study = importlib.import_module(f"codecircuits.studies.{'parens' if command == 'demo' else command}")
    seen = {}
    signature = inspect.signature(study.run)

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

    call.signature = signature
    return study, call


@pytest.mark.parametrize("command", STUDY_COMMANDS)
def test_study_command_defaults_are_the_study_config(monkeypatch, command):
    study, call = _capture(monkeypatch, command)
    args, kwargs = call()
    if command in ("parens", "subspace", "demo"):
        cfg_cls = study.ParensConfig if command in ("parens", "demo") else study.SubspaceConfig
        (cfg,) = args
        assert cfg == cfg_cls(), f"`codecircuits {command}` runs {cfg}, the library's default is {cfg_cls()}"
    else:
        assert not args
        given = {k: v for k, v in kwargs.items() if k not in CLI_KEYWORDS}
        assert given == {}, f"`codecircuits {command}` overrides the study's defaults: {given}"
        assert set(kwargs) <= set(call.signature.parameters)


def test_study_command_options_reach_the_study(monkeypatch):
    study, call = _capture(monkeypatch, "parens")
    (cfg,), _ = call("--prompts-per-n", "7", "--no-mined")
    assert cfg == study.ParensConfig(prompts_per_n=7, mined=False)
    study, call = _capture(monkeypatch, "cna")
    _, kw = call("--templates", "assert, comment", "--no-parens", "--n-sweep", "3")
    assert kw == {"templates": ("assert", "comment"), "paren_n_values": (), "n_sweep": 3, "progress": True}
    study, call = _capture(monkeypatch, "memories")
    _, kw = call("--max-tokens", "0", "--edit", "keyword,string", "--top-k", "5", "--quiet")
    assert kw["max_tokens"] is None and kw["edit"] == ["keyword", "string"] and kw["k"] == 5
    assert kw["progress"] is False
    study, call = _capture(monkeypatch, "signatures")
    _, kw = call("--layers", "0-2,5", "--alphas", "0,1")
    assert kw["layers"] == [0, 1, 2, 5] and kw["alphas"] == (0.0, 1.0)
    study, call = _capture(monkeypatch, "subspace")
    (cfg,), _ = call("--values", "1,2", "--epochs", "2")
    assert cfg == study.SubspaceConfig(values=(1, 2), epochs=2)


@pytest.mark.parametrize("command", STUDY_COMMANDS)
def test_study_command_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--model" in capsys.readouterr().out
