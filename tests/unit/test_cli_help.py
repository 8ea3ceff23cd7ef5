"""`mainsail --help` lists the commands; `mainsail up --help` explains every option."""

from __future__ import annotations

import pytest

from mainsail.cli.main import main

pytestmark = pytest.mark.unit


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("up", "model", "router", "sim", "operator", "crd"):
        assert f"    {command}" in out


def test_up_help_explains_each_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--file",
        "--host",
        "--http-port",
        "--grpc-port",
        "--redis-url",
        "--replicas",
        "--model-cache",
        "--ready-file",
        "--quiet",
    ):
        assert option in out
    assert "embedded" in out and "deploy/examples/tiny.yaml" in out


def test_delegated_commands_accept_their_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("router", "sim", "crd"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_bad_deployment_file_exits_2_naming_the_field(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    bad = Path(str(tmp_path)) / "bad.yaml"
    bad.write_text("metadata: {name: x}\nspec: {model: {name: m, generate: gpt}}\n")
    assert main(["up", "-f", str(bad)]) == 2
    assert "spec.model.generate" in capsys.readouterr().err
