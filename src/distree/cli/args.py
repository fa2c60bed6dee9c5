"""Arguments several commands share, defined without importing torch: the parser of every
command is built on each call, including ``--version`` and a board's onnxruntime worker."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from distree.defaults import DATA_ENV_VAR, DATA_FORMATS


class _DefaultsShown(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none worth saying (unset,
    off, empty) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        unset = d is None or d is False or d is argparse.SUPPRESS or d == []
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default {d})"


class DistreeParser(argparse.ArgumentParser):
    """The parser of ``distree`` and of each sub-command: defaults shown in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


def bounded(
    kind: type, low: float | None = None, high: float | None = None, *, above: bool = False, what: str = ""
) -> Callable[[str], float]:
    """An argparse type: a finite number of ``kind`` (int or float) in ``low..high`` (``above``:
    strictly above ``low``), or an error that says the range, before anything runs."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if above else value < low)
        if too_low or (high is not None and value > high):
            need = f"{'above' if above else 'at least'} {low}" if high is None else f"{low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {what + ' ' if what else ''}{need}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


#: The kinds of number the options take; the same limits as the cluster file's fields.
PORT = bounded(int, 1, 65535, what="a port number")
COUNT = bounded(int, 1)
INDEX = bounded(int, 0)
NON_NEGATIVE = bounded(float, 0.0)
POSITIVE = bounded(float, 0.0, above=True)
FRACTION = bounded(float, 0.0, 1.0)


def write_json(where: str, data: dict, args: argparse.Namespace) -> None:
    """A command's result as JSON into the file ``where`` (``-``: stdout), with the
    provenance of what made it (``distree.provenance``) unless it carries its own."""
    import json

    from distree.provenance import provenance_dict  # (no pydantic: `infer --json` on a client's install)

    if "provenance" not in data:
        data = {**data, "provenance": provenance_dict(args.argv)}
    text = json.dumps(data, indent=2) + "\n"
    if where == "-":
        sys.stdout.write(text)
    else:
        from pathlib import Path

        Path(where).write_text(text)


def shipped(path: str) -> str:
    """A default path of something distree's repository ships (``models/cifar10``,
    ``scenarios/...``): as given when it exists from here, else in the checkout distree
    runs from, so that the defaults work from any directory."""
    from pathlib import Path

    if Path(path).exists():
        return path
    checkout = Path(__file__).resolve().parents[3] / path  # src/distree/cli/args.py -> the repository
    if checkout.exists():
        return str(checkout)
    raise FileNotFoundError(
        f"{path} is not here nor in a distree checkout ({checkout.parent}); it ships with distree's "
        "repository: give its path"
    )


def log(msg: str) -> None:
    """A progress line on stderr (stdout holds a command's results)."""
    print(msg, file=sys.stderr, flush=True)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--data``, ``--format`` and ``--device``."""
    p.add_argument(
        "--data",
        help=f"data set path (image folder, CIFAR-10 python release, IDX folder or .npz pair); "
        f"default ${DATA_ENV_VAR}; 'cifar10' or 'fashion-mnist' downloads the official release",
    )
    p.add_argument("--format", choices=DATA_FORMATS, help="override format detection")
    p.add_argument("--device", help="torch device (default: cuda when present, else cpu)")


def policy_type(**filters: bool) -> Callable[[str], str]:
    """An argparse ``type`` accepting a registered policy name that passes ``filters``
    (``servable``, ``calibrated``, as ``policy_names`` takes them); the registry is imported
    only when the argument is given."""

    def check(name: str) -> str:
        from distree.policies import policy_names

        try:
            allowed = policy_names(**filters)
        except ValueError as err:  # a plugin that does not import
            raise argparse.ArgumentTypeError(str(err)) from None
        if name not in allowed:
            what = "".join(f"{k} " for k, v in filters.items() if v)
            raise argparse.ArgumentTypeError(f"{name!r} is not a {what}policy; choose one of {', '.join(allowed)}")
        return name

    check.__name__ = "policy"
    return check
