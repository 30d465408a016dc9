from __future__ import annotations

import json

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
