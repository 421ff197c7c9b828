"""Enrichment from IP address and user agent: country, device type, OS, browser, crawler flag.

Offline and bundled: nothing is downloaded at run time. Vectorised functions resolve each distinct
value once per call; the single-value helpers (the REST path) share a bounded LRU cache.
"""

from clicklake.platform.enrich.country import countries, country_of
from clicklake.platform.enrich.impressions import ENRICHED_COLUMNS, enrich_impressions
from clicklake.platform.enrich.user_agent import (
    DEVICE_TYPES,
    UNKNOWN,
    UNKNOWN_USER_AGENT,
    UserAgentInfo,
    user_agent_fields,
    user_agent_of,
)

__all__ = [
    "DEVICE_TYPES",
    "ENRICHED_COLUMNS",
    "UNKNOWN",
    "UNKNOWN_USER_AGENT",
    "UserAgentInfo",
    "countries",
    "country_of",
    "enrich_impressions",
    "user_agent_fields",
    "user_agent_of",
]
