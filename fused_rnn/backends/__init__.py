"""Backends implement the sequential part of an Elman layer behind one contract (docs/design.md).

Each backend module exposes::

    NAME: str
    TIERS: tuple[str, ...]                     # tier names it can be forced to ("" = it has no tiers)
    available() -> tuple[bool, str]            # usable here?  (False, why) otherwise
    supports_device(device) -> bool            # can it run on tensors of this device?
    pick_tier(H, B, dtype, device) -> str      # its own heuristic when no tier is forced
    forward(P, h0, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32) -> (Y, h_n)
    backward(dY, dh_n, Y, w_hh, lengths, reverse, nonlinearity, tier, allow_tf32) -> (dA, dh0)

and may expose (ElmanRecurrence uses it, in eager mode, when the caller owns P -- the layer's own projection)::

    forward_into(P, h0, w_hh, lengths, reverse, nonlinearity) -> h_n   # forward with Y written over P

Only ``select.py`` knows them all.
"""
