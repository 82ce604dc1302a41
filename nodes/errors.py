"""Errors users read in ComfyUI's dialog: "[<the node's name as the UI shows it>] what is wrong, and the fix".

Every node reports through here, so a message names its node exactly as its schema does (display_name) and
carries that prefix once, however deep the error started: the core's typed errors are mapped at the node
(`reported_by`), and an error that already names its node passes through unchanged.
"""
from __future__ import annotations

import contextlib
import math

from ..emma_core.face import FaceError
from ..emma_core.state_dict import WeightsFileError

# The core's errors whose message tells the user the fix; anything else is a bug and keeps its own type.
USER_ERRORS = (WeightsFileError, FaceError, FileNotFoundError)


class NodeError(ValueError):
    """An error addressed to the user, already prefixed with its node's name."""


def display_name(node) -> str:
    schema = node.define_schema()
    return schema.display_name or schema.node_id


def node_error(node, message: str) -> NodeError:
    """`node`: the node class (a V3 io.ComfyNode)."""
    return NodeError(f"[{display_name(node)}] {message}")


@contextlib.contextmanager
def reported_by(node, *also: type[Exception]):
    """The core's user errors, and the types in `also`, raised inside become `node`'s error, prefixed once."""
    try:
        yield
    except NodeError:
        raise
    except (*USER_ERRORS, *also) as error:
        raise node_error(node, str(error)) from error


def check_numbers(node, **values: float) -> None:
    """Each value must be finite and inside its input's range. ComfyUI checks the range of a typed-in value
    but not of one that arrives through a link, and NaN passes every comparison: a NaN weight would turn
    the whole context into NaN (a black picture) instead of an error."""
    inputs = {spec.id: spec for spec in node.define_schema().inputs}
    for name, value in values.items():
        lo, hi = getattr(inputs[name], "min", None), getattr(inputs[name], "max", None)
        allowed = f"a number from {lo:g} to {hi:g}" if lo is not None and hi is not None else "a finite number"
        if not math.isfinite(value):
            raise node_error(node, f"{name} is {value}: give {allowed}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise node_error(node, f"{name} is {value:g}: give {allowed}")
