"""idlemap doctor: what this kernel offers and what each command can do here."""
from __future__ import annotations

import json

from ..errors import IdlemapError
from ..kernel.features import probe

HELP = "show which kernel features idlemap can use here, and what works without the rest"
EXAMPLES = """\
  idlemap doctor            # kernel features, then every command: works here? how? what to do?
  idlemap doctor --json     # the same as JSON (schema idlemap.doctor/1)
"""
SCHEMA = "idlemap.doctor/1"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help=f"print the probe and verdicts as JSON (schema {SCHEMA})")


def feature_rows(env) -> list[tuple[str, str, str, str]]:
    """(feature, here, CONFIG_, since) for every kernel fact of the one
    feature table (requirements.FEATURES)."""
    from ..requirements import FEATURES
    return [(f.name, f.shown(env), f.config or f.hint, f.since) for f in FEATURES.values() if f.kernel]


def kmod_line(env) -> str:
    """The module in one line: loaded, or buildable here, or why not."""
    from ..requirements import FEATURES, missing
    if FEATURES["idlemap module"].met(env):
        iface = FEATURES["idlemap module interface"]
        if not iface.met(env):
            return f"idlemap module: loaded, not used: {iface.sentence()} -- {iface.hint}"
        return ("idlemap module: loaded (/dev/idlemap); `--backend auto` uses it first, "
                "except for a KVM guest's VMM (it cannot see EPT accessed bits)")
    lacks = missing(env, ["gcc and kernel headers", "module loading", "root"])
    if not lacks:
        return "idlemap module: not loaded, buildable here: `idlemap kmod build && idlemap kmod load`"
    return ("idlemap module: not loaded, not buildable here: "
            + "; ".join(f"{f.sentence()} -- {f.hint}" if f.hint else f.sentence() for f in lacks))


def run(args) -> int:
    from .. import cli
    from ..backends import choose
    from ..requirements import WAYS, gather, verdict
    f = probe()
    env = gather(f)
    auto_backend = None               # for scripts: the name, without parsing the sentence
    try:
        auto = choose("auto", features=f)
        auto_line, auto_backend = f"--backend auto here: {auto.reason}", auto.cls.name
    except IdlemapError as e:
        auto_line = f"--backend auto here: none ({e})"
    # Every command cli knows, in its order (a command the table does not
    # know yet is reported as such rather than silently left out).
    verdicts = [verdict(c, env) if c in WAYS else None for c in cli.COMMANDS]
    if args.json:
        print(json.dumps({"schema": SCHEMA, "features": f.as_dict(), "kmod": kmod_line(env), "auto": auto_line,
                          "auto_backend": auto_backend,
                          "commands": [v.as_dict() if v else {"command": c, "works": None}
                                       for c, v in zip(cli.COMMANDS, verdicts)]}, indent=1))
        return 0
    print(f"kernel {f.kernel}, running as {'root' if f.is_root else 'non-root'}"
          + (f", config from {f.config_source}" if f.config_source else ", kernel config not readable"))
    rows = feature_rows(env)
    w, hw = max(len(r[0]) for r in rows), max(8, *(len(r[1]) for r in rows))
    print(f"\n{'FEATURE'.ljust(w)}  {'HERE'.ljust(hw)} {'SINCE':7} NEEDS")
    for name, val, need, since in rows:
        print(f"{name.ljust(w)}  {val.ljust(hw)} {since or '-':7} {need}")
    print(f"\n{kmod_line(env)}\n{auto_line}")
    cw = max(len(c) for c in cli.COMMANDS)
    print(f"\n{'COMMAND'.ljust(cw)}  {'WORKS':5}  HOW HERE / WHY NOT, AND WHAT TO DO")
    for c, v in zip(cli.COMMANDS, verdicts):
        if v is None:
            print(f"{c.ljust(cw)}  {'?':5}  (not in idlemap's requirements table)")
            continue
        print(f"{c.ljust(cw)}  {'yes' if v.works else 'no':5}  "
              + (v.how if v.works else "; ".join(v.missing)))
        if v.works and v.missing:
            print(f"{''.ljust(cw)}         better, {v.best}: {'; '.join(v.missing)} -- {v.instead}")
        elif not v.works and v.instead:
            print(f"{''.ljust(cw)}         do: {v.instead}")
    return 0
