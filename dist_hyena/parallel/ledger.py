"""Communication ledger: the bytes each collective call moves off this rank, per layer and op.

Off by default (one attribute test per collective). A benchmark or test turns it on with
``with recording() as ledger: ...`` and reads ``ledger.totals()``. Entries are tagged with
the layer name of the module that issued them (``ledger_name``, set by :func:`name_layers`)
and the op; a backward pass records under the same layer with ``.backward`` appended, so
forward and backward volumes can be compared side by side.

What "bytes sent" means: for an all-to-all, the bytes this rank sends to *other* ranks
(the piece it keeps is not counted); for an all-reduce, the payload size (the wire
volume depends on the backend's algorithm, so the ledger does not guess it).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn


@dataclass
class Ledger:
    entries: list[tuple[str, str, int]] = field(default_factory=list)  # (layer, op, bytes)

    def add(self, layer: str, op: str, nbytes: int) -> None:
        self.entries.append((layer, op, int(nbytes)))

    def totals(self) -> dict[tuple[str, str], int]:
        """Bytes per ``(layer, op)``, summed over calls."""
        out: dict[tuple[str, str], int] = defaultdict(int)
        for layer, op, nbytes in self.entries:
            out[(layer, op)] += nbytes
        return dict(out)


_active: Ledger | None = None


def active() -> Ledger | None:
    """The ledger now recording, or None (the default: nothing is recorded)."""
    return _active


@contextmanager
def recording():
    """Record every collective issued inside the block (forward and backward) into a fresh ledger."""
    global _active
    previous, _active = _active, Ledger()
    try:
        yield _active
    finally:
        _active = previous


def name_layers(model: nn.Module) -> None:
    """Tag every module that communicates with its qualified name in ``model`` (its ledger layer)."""
    for name, module in model.named_modules():
        if hasattr(module, "ledger_name"):
            module.ledger_name = name or type(module).__name__
