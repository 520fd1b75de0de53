"""Every example in every command's --help parses with that command's real
options: the examples are the grammar's documentation, so they must not
drift from it (running them is the other tests' job)."""
import importlib
import shlex

import pytest

from idlemap import cli


def examples(name):
    mod = importlib.import_module(f"idlemap.commands.{name}")
    for line in mod.EXAMPLES.splitlines():
        line = line.strip()
        if not line.startswith("idlemap "):
            continue
        cmd = line.split("  #")[0].split(" # ")[0]
        # An example may chain commands or continue on the next line.
        cmd = cmd.split(" && ")[0].rstrip("\\").strip()
        yield cmd


CASES = [(name, ex) for name in cli.COMMANDS for ex in examples(name)]


def test_every_command_has_examples():
    assert {name for name, _ in CASES} == set(cli.COMMANDS)


@pytest.mark.parametrize("name,example", CASES, ids=[f"{n}:{e[8:40]}" for n, e in CASES])
def test_example_parses(name, example):
    argv = shlex.split(example)[1:]
    parser = cli.build_parser(argv[0])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`{example}` does not parse (exit {e.code})")
    # An example may show another command (vms shows `wss --vm`).
    assert args.command == argv[0]
