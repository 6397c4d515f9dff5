"""The ``earthgen`` command line (also ``python -m earthgen``).

Each subcommand lives in ``earthgen.commands.<name>`` and exposes ``register(subparsers)``.
User mistakes (:class:`~earthgen.errors.UserInputError`) print one clear message and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from earthgen import __version__
from earthgen.errors import EarthGenError, MissingDependencyError, UserInputError

# Subcommands available in this release, in --help order.
COMMANDS = ("world", "layout", "generate", "scene", "train", "eval", "augment", "demo", "app")

EPILOG = """\
examples:
  earthgen world --seed 3 --size 512 --gsd 0.5 --out outputs/world
  earthgen layout monaco-latest.osm.pbf --center 43.7384,7.4246 --size 512 --gsd 1 --out outputs/monaco
  earthgen scene --world 3 --size-m 128 --seed 0 --out outputs/scene
  earthgen train image-ldm --test-run --out outputs/train-test
  earthgen demo --out outputs
  earthgen augment DOTA/train --model runs/boxes/pipeline --n 500 --out DOTA-aug
  earthgen app --port 7860                # the web app on http://127.0.0.1:7860

Run `earthgen COMMAND --help` for the options of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earthgen",
        description="EarthGen: generative Earth imagery and 3D terrain.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"earthgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"earthgen.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
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
