"""Internet checksums (RFC 1071) and their incremental update (RFC 1624).

Owns the arithmetic only; the codec decides which bytes are covered.

Speed trick: 2**16 == 1 (mod 0xFFFF), so the ones-complement sum of the 16-bit big-endian words of a byte
string is congruent mod 0xFFFF to the whole string read as one big-endian integer.  ``int.from_bytes`` plus
one ``%`` runs in C, with no per-byte or per-word Python loop.  Likewise a 32-bit field (an IPv4 address)
contributes ``value % 0xFFFF`` to the sum, so addresses, ports and lengths of a pseudo-header can simply be
added as ints.

Ones-complement sums have two zeros (0x0000 and 0xFFFF).  A sum over data that is not all zero is reported
as 0xFFFF, never 0x0000 (the RFC 1071 fold gives the same), so checksums come out in [0, 0xFFFE] whether
they are computed in full or updated incrementally: rewrite and rebuild agree byte for byte.
"""

from __future__ import annotations

_M = 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Ones-complement sum of ``data`` (zero-padded to an even length) plus ``initial``, in [0, 0xFFFF].

    ``initial`` may be any non-negative int (e.g. the sum of pseudo-header fields, unfolded).
    0 is returned only when everything summed is zero.
    """
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    n += initial
    if not n:
        return 0
    return n % _M or _M


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 internet checksum: the complement of :func:`ones_sum`."""
    return _M - ones_sum(data, initial)


def pseudo_header_sum(src: int, dst: int, proto: int, length: int) -> int:
    """Unfolded sum of the IPv4 pseudo-header (addresses as 32-bit ints), for ``checksum(initial=)``."""
    return src + dst + proto + length


def pseudo_header_sum6(src: int, dst: int, proto: int, length: int) -> int:
    """Unfolded sum of the IPv6 pseudo-header (RFC 8200 §8.1; addresses as 128-bit ints, which contribute
    the sum of their 16-bit words mod 0xFFFF like any other field), for ``checksum(initial=)``."""
    return src + dst + proto + length


def l4_checksum(src: int, dst: int, proto: int, segment: bytes | bytearray | memoryview) -> int:
    """TCP/UDP checksum over the IPv4 pseudo-header and ``segment`` (its checksum field zeroed).

    Returns the raw value: UDP callers map 0 to 0xFFFF themselves (RFC 768), see :func:`udp_fix`.
    """
    return checksum(segment, src + dst + proto + len(segment))


def udp_fix(csum: int) -> int:
    """A computed UDP checksum of 0 is sent as 0xFFFF (0 on the wire means 'no checksum')."""
    return csum or _M


def _finish(s: int) -> int:
    r = s % _M
    return _M - r if r else 0


def csum_update16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for one changed 16-bit word: HC' = ~(~HC + ~m + m')."""
    if old == new:
        return csum
    return _finish((_M - csum) + (_M - old) + new)


def csum_update32(csum: int, old: int, new: int) -> int:
    """RFC 1624 for one changed 32-bit field (an IPv4 address): both halves at once."""
    if old == new:
        return csum
    return _finish((_M - csum) + (0xFFFFFFFF - old) + new)


def csum_update(csum: int, old_words: tuple[int, ...] | list[int], new_words: tuple[int, ...] | list[int],
                ) -> int:
    """RFC 1624 for several changed 16-bit words (``old_words[i]`` became ``new_words[i]``)."""
    s = _M - csum
    for o, n in zip(old_words, new_words, strict=True):
        s += (_M - o) + n
    return _finish(s)


def csum_delta(csum: int, delta: int) -> int:
    """Apply a pre-summed change: ``delta`` = sum(new) - sum(old) of the changed fields (any sign/size).

    Fields of 16 or 32 bits can be mixed, as long as each sits on a 16-bit boundary of the covered data.
    """
    if not delta % _M:
        return csum
    return _finish((_M - csum) + delta)
