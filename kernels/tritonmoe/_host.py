"""Integer helpers for host code (launch grids, tile sizes).

`triton.cdiv` and `triton.next_power_of_2` are `constexpr_function`s in Triton 3.6: every host call goes through
a wrapper that unwraps its arguments, ~6 us a call on a slow host (`experiments/NOTES.md` v14), and a layer call made
~25 of them. Host code uses these plain versions; kernels keep `tl.cdiv`.
"""
from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, as `triton.next_power_of_2` (which also gives 0 for 0)."""
    return 0 if n == 0 else 1 << (n - 1).bit_length()
