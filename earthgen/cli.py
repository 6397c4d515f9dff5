"""The ``earthgen`` command line (also ``python -m earthgen``).

Each subcommand lives in ``earthgen.commands.<name>`` and exposes ``register(subparsers)``.
User mistakes print one clear line and exit 2, never a traceback: a malformed or out-of-range
flag (argparse, :class:`Parser`) and a :class:`~earthgen.errors.UserInputError` raised by a
command's checks, which run before any model loads (docs/limits.md). Every command takes
``--threads N`` (default: :func:`earthgen.commands._args.default_threads`); torch is imported
(to set its thread count) only for the commands that use it, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from earthgen import __version__
from earthgen.errors import EarthGenError, MissingDependencyError, UserInputError

# Subcommands available in this release, in --help order.
COMMANDS = ("world", "layout", "generate", "scene", "train", "eval", "augment", "demo", "app")
# Commands that run torch models: torch's thread count is set before they run.
TORCH_COMMANDS = frozenset({"generate", "scene", "train", "eval", "augment", "demo", "app"})

EPILOG = """\
examples:
  earthgen world --seed 3 --size 512 --gsd 0.5 --out outputs/world
  earthgen layout monaco-latest.osm.pbf --center 43.7384,7.4246 --size 512 --gsd 1 \\
      --out outputs/monaco
  earthgen scene --world 3 --size-m 128 --seed 0 --out outputs/scene
  earthgen train image-ldm --test-run --out outputs/train-test
  earthgen demo --out outputs
  earthgen augment DOTA/train --model runs/boxes/pipeline --n 500 --out DOTA-aug
  earthgen app --port 7860                # the web app on http://127.0.0.1:7860

Run `earthgen COMMAND --help` for the options of each command.
"""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``earthgen CMD: error: argument --flag: ...`` (exit 2),
    the usage left to ``--help``. Subcommand parsers inherit it (``add_subparsers``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        msg = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {msg} (see {self.prog} --help)\n")


def _leaf_parsers(parser: argparse.ArgumentParser):
    """The parsers that run a command (those without subcommands of their own)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
            yield from _leaf_parsers(child)


def _add_threads(parser: argparse.ArgumentParser) -> None:
    from earthgen.commands._args import threads_int

    for p in _leaf_parsers(parser):
        if p is parser or "--threads" in p._option_string_actions:
            continue
        p.add_argument(
            "--threads",
            type=threads_int,
            default=None,
            metavar="N",
            help="CPU threads of torch (default: $OMP_NUM_THREADS, else the CPUs this "
            "process may use; docs/limits.md)",
        )


def set_threads(args: argparse.Namespace) -> int:
    """Set torch's intra-op thread count from ``--threads`` or the default; returns it. torch is
    imported only for :data:`TORCH_COMMANDS` (or when something imported it already)."""
    from earthgen.commands._args import default_threads

    n = getattr(args, "threads", None) or default_threads()
    if getattr(args, "command", None) in TORCH_COMMANDS or "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="earthgen",
        description="EarthGen: generative Earth imagery and 3D terrain.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"earthgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"earthgen.commands.{name}").register(sub)
    _add_threads(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check = getattr(args, "check", None)  # a command's path / limit checks: before torch loads
        if check is not None:
            check(args)
        set_threads(args)
        return int(args.func(args) or 0)
    except UserInputError as e:
        print(f"earthgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MissingDependencyError as e:
        print(f"earthgen {args.command}: error: {e}", file=sys.stderr)
        return 3
    except EarthGenError as e:
        print(f"earthgen {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
