"""Country of an IP address (ISO-3166 alpha-2), offline, from the registries' delegation data.

`iptocc` ships the regional internet registries' allocation tables inside its wheel, so nothing is
downloaded at run time. Addresses it cannot place (private, loopback, link-local, reserved,
documentation, multicast or unallocated ranges) and text that is not an address are "unknown".
"""

from __future__ import annotations

import functools
import ipaddress

import iptocc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clicklake.platform.enrich.distinct import (
    StringValues,
    as_string_array,
    distinct_array,
    is_text,
)

UNKNOWN = "unknown"

# Longest textual IPv6 form with a zone or embedded IPv4 is 45 characters; anything longer is
# not an address and must not grow the cache.
_MAX_ADDRESS_LENGTH = 64
_IPV4_MAPPED_PREFIX = "::ffff:"
# What `str.strip` removes among ASCII characters.
_ASCII_WHITESPACE = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"


def _normalise(ip: str) -> str:
    """Surrounding whitespace stripped; an IPv4-mapped IPv6 address (dual-stack sockets report
    clients as ``::ffff:a.b.c.d``) reduced to its IPv4 address, in any spelling. Per value, for
    the rare address that is not ASCII (where Python's notion of whitespace is the reference)."""
    ip = ip.strip()
    if ip[:7].lower() == _IPV4_MAPPED_PREFIX and "." in ip:
        return ip[7:]
    if "ffff" in ip.lower():
        return _ipv4_mapped(ip)
    return ip


@functools.lru_cache(maxsize=65_536)
def _ipv4_mapped(ip: str) -> str:
    """The IPv4 address of an IPv4-mapped IPv6 address in a spelling other than
    ``::ffff:a.b.c.d`` (``::ffff:808:808``, ``0:0:0:0:0:ffff:8.8.8.8``); any other text as given.
    Every such spelling holds "ffff" (the sixth group cannot be written otherwise), so callers
    parse only text that does."""
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip  # not an address: looked up as given, which places nothing
    mapped = address.ipv4_mapped
    # A zone makes it a link-local scoped address, not a client: left unplaced, as before.
    return str(mapped) if mapped is not None and address.scope_id is None else ip


def _cleaned(words: pa.Array) -> list[str]:
    """`_normalise` of every address ("" when longer than `_MAX_ADDRESS_LENGTH`), vectorised:
    an hour holds tens of thousands of distinct addresses. Arrow's whitespace differs from
    `str.strip` only outside ASCII, so an address with other characters takes `_normalise`."""
    # Digits and dots alone (every dotted IPv4 address) are clean as they are: one kernel
    # sets them aside, and the dozen below see only the rest.
    plain = pc.match_substring_regex(words, _PLAIN).to_numpy(zero_copy_only=False)
    if plain.all():
        return words.to_pylist()
    out = words.to_pylist()
    rest = np.flatnonzero(~plain)
    for i, word in zip(rest.tolist(), _cleaned_other(words.take(pa.array(rest))), strict=True):
        out[i] = word
    return out


_PLAIN = f"^[0-9.]{{1,{_MAX_ADDRESS_LENGTH}}}$"


def _cleaned_other(words: pa.Array) -> list[str]:
    """`_cleaned` of any addresses."""
    trimmed = pc.utf8_trim(words, characters=_ASCII_WHITESPACE)
    mapped = pc.and_(pc.equal(pc.ascii_lower(pc.utf8_slice_codeunits(trimmed, 0, 7)),
                              _IPV4_MAPPED_PREFIX),
                     pc.match_substring(trimmed, "."))
    cleaned = pc.if_else(mapped, pc.utf8_slice_codeunits(trimmed, 7), trimmed)
    too_long = pc.greater(pc.utf8_length(words), _MAX_ADDRESS_LENGTH)
    out = pc.if_else(too_long, "", cleaned).to_pylist()
    # Other spellings of a mapped address are IPv6 text holding "ffff": one plain substring
    # kernel finds the IPv6 addresses (few, in most logs), then Python looks at those alone.
    v6 = pc.match_substring(trimmed, ":")
    if pc.any(v6).as_py():
        v6 = pc.and_(v6, pc.invert(pc.or_(mapped, too_long)))
        for i in np.flatnonzero(v6.to_numpy(zero_copy_only=False)).tolist():
            if "ffff" in out[i].lower():
                out[i] = _ipv4_mapped(out[i])
    other = np.flatnonzero(~pc.string_is_ascii(words).to_numpy(zero_copy_only=False)
                           & ~too_long.to_numpy(zero_copy_only=False))
    for i in other.tolist():
        out[i] = _normalise(words[i].as_py())
    return out


def _country_codes(words: pa.Array) -> pa.Array:
    """The one underlying lookup: a country code or "unknown" per address (a `string` array
    without nulls), in order."""
    if not len(words):
        return pa.array([], pa.string())
    found = pc.dictionary_encode(pa.array(iptocc.country_code(_cleaned(words)), pa.string()))
    # A handful of distinct answers: each is checked once, then taken back out per address.
    valid = [_valid(code) for code in found.dictionary.to_pylist()]
    return pa.array([*valid, UNKNOWN], pa.string()).take(
        found.indices.fill_null(len(valid)))


def countries(ips: StringValues) -> pa.Array:
    """Country code of each address: a `string` array, "unknown" where it cannot be placed.

    Accepts IPv4 and IPv6 text in an Arrow array, chunked array or Python sequence. Each distinct
    address is looked up once per call.
    """
    distinct, indices = distinct_array(as_string_array(ips))
    return pa.concat_arrays([_country_codes(distinct), pa.array([UNKNOWN], pa.string())]
                            ).take(indices)


def _valid(code: str | None) -> str:
    return code if code and len(code) == 2 and code.isalpha() else UNKNOWN


@functools.lru_cache(maxsize=65_536)
def _country_cached(ip: str) -> str:
    # One address per predict: the per-value definition (~1 us) instead of the column path's
    # Arrow kernels (~100 us for a single value); tests hold the two equal.
    return _valid(iptocc.country_code([_normalise(ip)])[0])


def country_of(ip: str | None) -> str:
    """Country code of one address (the REST path), through a bounded process-wide LRU cache."""
    if not is_text(ip) or not ip or len(ip) > _MAX_ADDRESS_LENGTH:
        return UNKNOWN
    return _country_cached(ip)
