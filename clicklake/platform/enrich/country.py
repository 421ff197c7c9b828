"""Country of an IP address (ISO-3166 alpha-2), offline, from the registries' delegation data.

`iptocc` ships the regional internet registries' allocation tables inside its wheel, so nothing is
downloaded at run time. Addresses it cannot place (private, loopback, link-local, reserved,
documentation, multicast or unallocated ranges) and text that is not an address are "unknown".
"""

from __future__ import annotations

import functools

import iptocc
import pyarrow as pa

from clicklake.platform.enrich.distinct import (
    StringValues,
    as_string_array,
    distinct_values,
    is_text,
    spread,
)

UNKNOWN = "unknown"

# Longest textual IPv6 form with a zone or embedded IPv4 is 45 characters; anything longer is
# not an address and must not grow the cache.
_MAX_ADDRESS_LENGTH = 64
_IPV4_MAPPED_PREFIX = "::ffff:"


def _normalise(ip: str) -> str:
    """Surrounding whitespace stripped; an IPv4-mapped IPv6 address (dual-stack sockets report
    clients as ``::ffff:a.b.c.d``) reduced to its IPv4 address."""
    ip = ip.strip()
    if ip[:7].lower() == _IPV4_MAPPED_PREFIX and "." in ip:
        return ip[7:]
    return ip


def _country_codes(ips: list[str]) -> list[str]:
    """The one underlying lookup: a country code or "unknown" per address, in order."""
    cleaned = [_normalise(ip) if len(ip) <= _MAX_ADDRESS_LENGTH else "" for ip in ips]
    return [code if code and len(code) == 2 and code.isalpha() else UNKNOWN
            for code in iptocc.country_code(cleaned)]


def countries(ips: StringValues) -> pa.Array:
    """Country code of each address: a `string` array, "unknown" where it cannot be placed.

    Accepts IPv4 and IPv6 text in an Arrow array, chunked array or Python sequence. Each distinct
    address is looked up once per call.
    """
    distinct, indices = distinct_values(as_string_array(ips))
    return spread(_country_codes(distinct), UNKNOWN, indices, pa.string())


@functools.lru_cache(maxsize=65_536)
def _country_cached(ip: str) -> str:
    return _country_codes([ip])[0]


def country_of(ip: str | None) -> str:
    """Country code of one address (the REST path), through a bounded process-wide LRU cache."""
    if not is_text(ip) or not ip or len(ip) > _MAX_ADDRESS_LENGTH:
        return UNKNOWN
    return _country_cached(ip)
