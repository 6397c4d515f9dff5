"""``earthgen eval``: measure generated data against its conditions.

Each task registers itself from ``earthgen.commands.eval_<task>`` (``register(subparsers)``).
"""

from __future__ import annotations

import argparse
import importlib

# Evaluation tasks, in --help order.
TASKS = ("image", "scene", "augment")

DESCRIPTION = """\
Evaluate generated data against the conditions it was generated from. Run
`earthgen eval TASK --help` for the metrics and options of each task.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate generated data",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    for name in TASKS:
        importlib.import_module(f"earthgen.commands.eval_{name}").register(tasks)
    p.set_defaults(func=lambda args: p.print_help() or 2)
