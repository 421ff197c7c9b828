"""Countries of the simulated audience and real IPv4 ranges allocated to them.

Every block below is a /16 that the public registries allocate, as a whole, to the country it is
listed under (checked address by address against the iptocc database when the table was made),
so an IP-to-country lookup of a generated address finds the intended country. Crawler blocks are
the published ranges of the crawlers' operators.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Country:
    code: str
    share: float  # share of human users
    utc_offset: int  # hours; drives the local time-of-day curves
    cpm: float  # typical price of 1000 impressions, USD
    ctr_effect: float  # additive, on the logit of the click probability


COUNTRIES: tuple[Country, ...] = (
    Country("US", 0.28, -5, 6.0, 0.00),
    Country("GB", 0.08, 0, 5.0, 0.05),
    Country("DE", 0.08, 1, 5.0, -0.10),
    Country("FR", 0.06, 1, 4.0, -0.05),
    Country("IN", 0.10, 5, 0.8, 0.30),
    Country("BR", 0.07, -3, 1.5, 0.25),
    Country("JP", 0.06, 9, 5.0, -0.35),
    Country("CA", 0.04, -5, 5.0, 0.00),
    Country("AU", 0.03, 10, 5.0, 0.05),
    Country("ES", 0.03, 1, 3.0, 0.10),
    Country("IT", 0.03, 1, 3.0, 0.05),
    Country("MX", 0.03, -6, 1.5, 0.20),
    Country("KR", 0.03, 9, 4.0, -0.20),
    Country("ID", 0.03, 7, 0.8, 0.35),
    Country("NL", 0.02, 1, 4.5, -0.05),
)
COUNTRY_CODES: tuple[str, ...] = tuple(c.code for c in COUNTRIES)

IPV4_BLOCKS: dict[str, tuple[str, ...]] = {
    "US": ("5.60.0.0/16", "23.207.0.0/16", "32.172.0.0/16", "45.35.0.0/16", "50.190.0.0/16",
           "64.143.0.0/16", "66.124.0.0/16", "68.104.0.0/16"),
    "GB": ("1.186.0.0/16", "31.84.0.0/16", "31.121.0.0/16", "62.189.0.0/16", "74.149.0.0/16",
           "79.74.0.0/16", "81.86.0.0/16", "81.141.0.0/16"),
    "DE": ("5.4.0.0/16", "31.234.0.0/16", "37.84.0.0/16", "46.94.0.0/16", "62.154.0.0/16",
           "77.20.0.0/16", "78.51.0.0/16", "79.218.0.0/16"),
    "FR": ("5.48.0.0/16", "37.164.0.0/16", "77.130.0.0/16", "77.157.0.0/16", "78.120.0.0/16",
           "78.211.0.0/16", "78.245.0.0/16", "80.8.0.0/16"),
    "IN": ("1.6.0.0/16", "14.140.0.0/16", "27.57.0.0/16", "27.251.0.0/16", "47.15.0.0/16",
           "49.37.0.0/16", "49.137.0.0/16", "49.249.0.0/16"),
    "BR": ("139.82.0.0/16", "152.249.0.0/16", "177.50.0.0/16", "177.79.0.0/16", "177.106.0.0/16",
           "177.135.0.0/16", "177.160.0.0/16", "177.190.0.0/16"),
    "JP": ("1.5.0.0/16", "36.14.0.0/16", "49.253.0.0/16", "60.37.0.0/16", "60.113.0.0/16",
           "61.115.0.0/16", "106.147.0.0/16", "111.87.0.0/16"),
    "CA": ("23.16.0.0/16", "24.81.0.0/16", "24.226.0.0/16", "64.99.0.0/16", "68.144.0.0/16",
           "70.29.0.0/16", "70.72.0.0/16", "72.140.0.0/16"),
    "AU": ("1.40.0.0/16", "1.129.0.0/16", "1.143.0.0/16", "1.157.0.0/16", "49.176.0.0/16",
           "49.190.0.0/16", "58.105.0.0/16", "58.167.0.0/16"),
    "ES": ("5.40.0.0/16", "37.15.0.0/16", "46.24.0.0/16", "47.61.0.0/16", "62.43.0.0/16",
           "77.208.0.0/16", "77.229.0.0/16", "79.146.0.0/16"),
    "IT": ("5.84.0.0/16", "5.168.0.0/16", "31.196.0.0/16", "37.179.0.0/16", "62.110.0.0/16",
           "79.7.0.0/16", "79.23.0.0/16", "79.39.0.0/16"),
    "MX": ("131.178.0.0/16", "148.206.0.0/16", "148.216.0.0/16", "148.229.0.0/16",
           "148.240.0.0/16", "148.250.0.0/16", "177.226.0.0/16", "177.238.0.0/16"),
    "KR": ("1.11.0.0/16", "1.224.0.0/16", "14.36.0.0/16", "14.76.0.0/16", "27.171.0.0/16",
           "39.29.0.0/16", "42.29.0.0/16", "49.31.0.0/16"),
    "ID": ("36.64.0.0/16", "36.69.0.0/16", "36.74.0.0/16", "36.79.0.0/16", "36.84.0.0/16",
           "36.89.0.0/16", "36.94.0.0/16", "39.195.0.0/16"),
    "NL": ("23.109.0.0/16", "46.129.0.0/16", "62.185.0.0/16", "77.160.0.0/16", "77.174.0.0/16",
           "80.112.0.0/16", "82.93.0.0/16", "83.82.0.0/16"),
}


def cidr_bases(cidrs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    return (np.array([int(n.network_address) for n in nets], dtype=np.uint32),
            np.array([n.num_addresses for n in nets], dtype=np.uint32))


_COUNTRY_BASES = [cidr_bases(IPV4_BLOCKS[c]) for c in COUNTRY_CODES]


def sample_ips(rng: np.random.Generator, country_idx: np.ndarray) -> np.ndarray:
    """One random host address (uint32) in the real ranges of each given country index."""
    country_idx = np.asarray(country_idx)
    out = np.empty(len(country_idx), dtype=np.uint32)
    for c in np.unique(country_idx):
        sel = np.flatnonzero(country_idx == c)
        out[sel] = sample_in_blocks(rng, *_COUNTRY_BASES[c], len(sel))
    return out


def sample_in_blocks(rng: np.random.Generator, bases: np.ndarray, sizes: np.ndarray,
                     n: int) -> np.ndarray:
    """n addresses spread over the blocks, avoiding the .0 and .255 hosts of every /24."""
    block = rng.integers(0, len(bases), n)
    offset = rng.integers(0, sizes[block].astype(np.int64))
    ip = (bases[block].astype(np.int64) + offset)
    ip = (ip & ~0xFF) | rng.integers(1, 255, n)  # host part 1..254
    return ip.astype(np.uint32)


def ip_text(ips: np.ndarray) -> list[str]:
    """Dotted-quad text of uint32 addresses."""
    ips = np.asarray(ips, dtype=np.uint32)
    octets = [((ips >> s) & 0xFF).tolist() for s in (24, 16, 8, 0)]
    return [f"{a}.{b}.{c}.{d}" for a, b, c, d in zip(*octets, strict=True)]
