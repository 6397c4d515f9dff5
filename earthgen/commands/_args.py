"""Argument parsers shared by several subcommands: they turn a malformed value into a clear
argparse error (exit 2, usage shown) instead of a stack trace."""

from __future__ import annotations

import argparse


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def size_pair(text: str) -> tuple[int, int]:
    """``512`` or ``640x480`` (width x height) in pixels -> (width, height)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}")
    vals = tuple(positive_int(p) for p in parts)
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def float_list(n: int, what: str):
    def parse(text: str) -> tuple[float, ...]:
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if len(parts) != n:
            raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: not numbers: {text!r}") from None

    return parse
