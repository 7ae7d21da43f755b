"""README stays true: its recipe reference is the generated one, and every command it shows exists."""

from __future__ import annotations

import re
from pathlib import Path

from vlalign.cli import build_parser
from vlalign.config.reference import BEGIN, END, render_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_recipe_reference_is_generated_from_the_schema():
    text = README.read_text()
    start = text.index(BEGIN)
    end = text.index(END) + len(END)
    assert text[start:end] == render_reference(), (
        "run: python -m vlalign.config.reference --write README.md"
    )


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def test_every_command_shown_in_readme_exists():
    parser = build_parser()
    text = README.read_text()
    # commands in inline code (`vlalign ...`) and at the start of code-block lines
    spans = re.findall(r"`vlalign ([^`]+)`", text) + re.findall(r"^vlalign (.+)$", text, re.M)
    shown = [" ".join(s.split()[:2]) for s in spans if not s.startswith("-")]
    assert len(shown) > 15
    top = _subparsers(parser)
    for cmd in shown:
        words = cmd.split()
        assert words[0] in top, f"README shows `vlalign {cmd}` but there is no such command"
        sub = _subparsers(top[words[0]])
        if sub and len(words) > 1 and not words[1].startswith("-"):
            assert words[1] in sub, f"README shows `vlalign {cmd}`: no subcommand {words[1]!r}"


def test_make_targets_in_readme_exist():
    makefile = (README.parent / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z]+)", README.read_text())):
        assert re.search(rf"^{target}:", makefile, re.M), target
