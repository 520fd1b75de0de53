"""One unit convention (issue 16, item 6): binary MiB written "MiB", stated
in every command's --help; no table header says "MB"."""
import glob
import os
import re

import pytest

from idlemap.cli import COMMANDS, build_parser

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src", "idlemap")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_help_states_the_units(name):
    p = build_parser(name)
    sub = next(a for a in p._subparsers._group_actions if a.choices).choices[name]
    assert "MiB = 2^20 bytes" in sub.format_help()


def test_main_help_states_the_units():
    assert "MiB = 2^20 bytes" in build_parser().format_help()


def test_no_header_or_sentence_says_mb():
    bad = []
    for path in glob.glob(os.path.join(SRC, "**", "*.py"), recursive=True):
        for i, line in enumerate(open(path), 1):
            # "(MB)" headers and "N MB" in printed text; option names like
            # --max-mb-per-period are kept for compatibility
            if re.search(r'\(MB\)|\d\} MB\b|" MB\b|\bMB/s\b', line):
                bad.append(f"{os.path.relpath(path, SRC)}:{i}: {line.strip()}")
    assert not bad, bad
