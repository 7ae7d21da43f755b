"""The CLI starts fast: building the command tree imports no torch, transformers, ray or mlflow."""

from __future__ import annotations

import subprocess
import sys

from data_pipeline.defaults import CONVERTER_FORMATS


def test_building_the_parser_imports_no_heavy_library():
    code = (
        "import sys, vlalign.cli; vlalign.cli.build_parser(); "
        "print(','.join(m for m in ('torch', 'transformers', 'ray', 'mlflow', 'webdataset', 'deepspeed') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_convert_format_names_match_the_converters():
    from data_pipeline.converters import FORMATS

    assert tuple(sorted(FORMATS)) == CONVERTER_FORMATS


def test_every_area_registers_its_commands():
    from vlalign.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for cmd in (
        "validate",
        "ls",
        "cp",
        "run",
        "submit",
        "jobs",
        "data",
        "eval",
        "registry",
        "ui",
        "demo",
    ):
        assert cmd in sub.choices, cmd
