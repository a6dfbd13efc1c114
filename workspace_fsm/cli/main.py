"""The ``workspace-fsm`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_diagram(args: argparse.Namespace) -> int:
    from workspace_fsm.cli.diagram import lifecycle_markdown
    from workspace_fsm.cli.lifecycles import LifecycleNotFound, load_lifecycle

    try:
        lc = load_lifecycle(args.lifecycle)
    except LifecycleNotFound as exc:
        print(f"workspace-fsm diagram: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        sys.stdout.write(lifecycle_markdown(lc))
    else:
        sys.stdout.write(lc.mermaid(f"{lc.resource.kind} lifecycle"))
    return 0


def load_catalogue(paths: Sequence[str] | None):
    """The shipped preset catalogue extended by each ``--catalogue FILE`` in order (later files win).

    Raises :class:`~workspace_fsm.kaito.catalogue.CatalogueError` naming the file and the problem."""
    from workspace_fsm.kaito.catalogue import Catalogue

    catalogue = Catalogue.default()
    for path in paths or ():
        catalogue = catalogue.merged(Catalogue.from_yaml(path))
    return catalogue


def _cmd_validate(args: argparse.Namespace) -> int:
    from workspace_fsm.kaito.catalogue import CatalogueError
    from workspace_fsm.kaito.validation import validate_files

    try:
        catalogue = load_catalogue(args.catalogue)
    except CatalogueError as exc:
        print(f"workspace-fsm validate: cannot use --catalogue {exc}", file=sys.stderr)
        return 2
    return validate_files(args.files, catalogue=catalogue, auto_provisioning=not args.byo_nodes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workspace-fsm",
        description="The KAITO Workspace lifecycle as an explicit, persisted, non-blocking state machine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("diagram", help="print the lifecycle state machine as Mermaid, generated from the live table")
    p.add_argument("--markdown", action="store_true", help="print the whole reference page (diagram, states, guards)")
    p.add_argument("--lifecycle", default="workspace", metavar="NAME|MODULE:ATTR",
                   help="workspace (default), ragengine, or an author's lifecycle (package.module:ATTR, file.py:ATTR)")
    p.set_defaults(func=_cmd_diagram)

    p = sub.add_parser(
        "validate", help="check Workspace manifests offline (exit 0 all valid, 1 invalid or not parsed, 2 unreadable)",
        description="Check Workspaces and RAGEngines as KAITO's admission webhooks would, without a cluster.\n"
                    "Each problem is one line: the file, the document (its index in the file, from 1; and\n"
                    "items[i] inside a kind: List, as kubectl get -o yaml prints), the object (namespace/name),\n"
                    "the field, [Reason] and what to do.",
        epilog="exit status:\n"
               "  0  every Workspace and RAGEngine is valid (other kinds of objects are skipped)\n"
               "  1  an object is invalid, a document is not an object (a YAML list or a scalar),\n"
               "     or a file's YAML does not parse (its line and column, and where the construct\n"
               "     that failed began)\n"
               "  2  a file cannot be read (missing, a directory, not UTF-8), or --catalogue is unusable",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="YAML files, multi-document; - reads standard input; kinds other than Workspace and RAGEngine "
                        "are skipped")
    p.add_argument("--catalogue", action="append", metavar="FILE",
                   help="extra preset catalogue (presets.yaml or KAITO supported_models.yaml shape); repeatable")
    p.add_argument("--byo-nodes", action="store_true",
                   help="validate for a cluster with node auto-provisioning disabled (bring-your-own GPU nodes)")
    p.set_defaults(func=_cmd_validate)

    _add_late_commands(sub)
    return parser


def _add_late_commands(sub: argparse._SubParsersAction) -> None:
    """Commands whose modules may be heavier to import: registered here, imported when run."""
    from workspace_fsm.cli.run import add_parser as add_run
    from workspace_fsm.cli.simulate import add_parser as add_simulate

    from workspace_fsm.cli.embedded import add_cluster_parser
    from workspace_fsm.cli.explain import add_parser as add_explain

    add_simulate(sub)
    add_explain(sub)
    add_run(sub)
    add_cluster_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("workspace-fsm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
