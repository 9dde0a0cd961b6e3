"""Contenders as people write them on a command line: `random`, `oracle`, `NAME=cem:VERSION[:rcan:RCAN]`."""

from __future__ import annotations

import argparse

from services.evaluation.closed_loop import Contender


def split_contender(text: str) -> tuple[str, str, str, str]:
    """(name, policy, model, transform model) of a --contender value; absent parts are "".

    `random`, `oracle`, `NAME=cem:MODEL` or `NAME=cem:MODEL:rcan:RCAN`, where
    MODEL and RCAN name versions (the trainer also takes labels there).

    Raises:
        argparse.ArgumentTypeError: the text is none of those.
    """
    if text in ("random", "oracle"):
        return text, text, "", ""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    cem = sep and parts[0] == "cem"
    if cem and len(parts) == 2:
        return name, "cem", parts[1], ""
    if cem and len(parts) == 4 and parts[2] == "rcan":
        return name, "cem", parts[1], parts[3]
    raise argparse.ArgumentTypeError(
        f"--contender {text!r}: expected random, oracle or NAME=cem:VERSION[:rcan:RCAN_VERSION]"
    )


def parse_contender(text: str) -> Contender:
    """`random`, `oracle`, `NAME=cem:VERSION` or `NAME=cem:VERSION:rcan:RCAN_VERSION`.

    Raises:
        argparse.ArgumentTypeError: the text is none of those.
    """
    name, policy, model, rcan = split_contender(text)
    try:
        if rcan:
            return Contender(name, policy, int(model), "rcan", int(rcan))
        return Contender(name, policy, int(model) if model else 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--contender {text!r}: {err}") from None
