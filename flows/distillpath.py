"""The ``distillpath`` console script: one subcommand per job, each the same code as ``python -m flows.<job>``.

``distillpath tile --slides DIR --out STORE`` runs exactly what
``python -m flows.tile_tcga --slides DIR --out STORE`` runs: the subcommand
imports that module and calls its ``main`` with the remaining arguments
(and its own name, for ``--help`` and messages). Modules are imported only
once chosen, so ``distillpath --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys

# subcommand: (module, what it does). Every module has main(argv, prog) -> exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "tile": ("flows.tile_tcga", "tile a folder or CSV of slides into a tile store"),
    "register-plism": ("flows.register_plism", "register a PLISM-style study to its reference condition"),
    "extract-plism": ("flows.extract_plism", "register a PLISM-style study and cut its aligned tiles"),
    "embed": ("flows.embed", "embed a tile store with a model"),
    "distill": ("flows.distill", "distil a teacher into a student on tile stores"),
    "robustness": ("flows.robustness", "score PLISM robustness of embedding stores"),
    "evaluate": ("flows.evaluate", "probe an embedding store against a labels table"),
    "serve": ("flows.serve", "serve every job as a Prefect deployment"),
    "break-lock": ("flows.break_lock", "show or break a store's run lock"),
    "info": ("flows.inspect", "summarise a store: kind, slides, tiles, failures, parameters, size"),
    "preview": ("flows.inspect", "paste a slide's tiles back at their coordinates, as a PNG"),
    "qc": ("flows.inspect", "(re)write a tile store's qc/index.html"),
}
# Commands that are subcommands of their module's own command line: the name is passed on in front.
NAMED_IN_MODULE = {"info", "preview", "qc"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"distillpath: no command {name!r}; there are {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if name in NAMED_IN_MODULE:
        return module.main([name, *rest], prog="distillpath")
    return module.main(rest, prog=f"distillpath {name}")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: distillpath COMMAND [options]   (distillpath COMMAND --help for its options)\n\ncommands:\n"
        + "\n".join(lines)
    )


if __name__ == "__main__":
    sys.exit(main())
