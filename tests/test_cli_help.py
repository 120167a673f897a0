"""Every command's help as a user reads it: no value suggested for a flag, one ``--verbose``,
upper-case metavars in the usage line; and what ``--verbose`` adds to the log."""

from __future__ import annotations

import logging
import re

import pytest
import typer
from cli import run_cli

from wsi_ncmi.cli import app
from wsi_ncmi.cli.common import setup_logging


def command_paths(group=None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the application as its words (``("manifest", "check")``…)."""
    group = group or typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


COMMANDS = command_paths()
USAGE_ARGUMENT = re.compile(r"^(\[[A-Z_]+\]|\{[A-Z_]+\})(\.\.\.)?$")


def test_every_command_is_listed():
    assert {p[0] for p in COMMANDS} >= {"tile", "extract", "train", "eval", "compare", "verify",
                                        "demo", "heatmap", "predict", "manifest"}
    assert ("manifest", "check") in COMMANDS


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_help_suggests_no_value_for_a_flag_and_has_one_verbose(words):
    text = run_cli(*words, "--help").stdout
    assert "<bool>" not in text
    assert "--no-verbose" not in text
    assert re.search(r"^  --verbose  ", text, re.M), text
    usage = re.search(r"^Usage: \S+ (.*)$", text, re.M)[1].split()
    assert usage[:len(words) + 1] == [*words, "[OPTIONS]"]
    for piece in usage[len(words) + 1:]:
        assert USAGE_ARGUMENT.match(piece), f"{' '.join(words)}: usage shows {piece!r}"


def test_a_flag_given_a_value_reads_the_value_as_an_input(tmp_path):
    """``--verbose`` takes no value (the help shows none): a following word is a slide."""
    out = run_cli("tile", "--verbose", "true", "--out", tmp_path / "ws", check=False)
    assert out.returncode == 1
    assert "true: file not found (flags such as --verbose take no value: drop 'true')" \
        in out.stderr


def test_verbose_logs_our_debug_lines_and_not_other_libraries(capsys):
    setup_logging(verbose=True)
    logging.getLogger("wsi_ncmi.stages.evaluate").debug("ours")
    logging.getLogger("matplotlib.font_manager").debug("findfont: theirs")
    logging.getLogger("PIL.PngImagePlugin").debug("STREAM theirs")
    logging.getLogger("matplotlib").warning("their warning")
    err = capsys.readouterr().err
    assert "DEBUG ours" in err and "theirs" not in err and "their warning" in err
    setup_logging(verbose=False)
    logging.getLogger("wsi_ncmi").debug("hidden")
    logging.getLogger("wsi_ncmi").info("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err
