"""Device type, OS, browser and crawler flag from a user agent, offline.

Browser and OS families come from ua-parser with its bundled rules (``ua-parser-builtins``) and its
Rust regex accelerator (``ua-parser-rs``). Whether a user agent is a crawler is decided by
crawlerdetect alone, so the two never disagree: ``device_type == "bot"`` exactly when
``is_crawler``. By crawlerdetect's rules, search and SEO bots (Googlebot, bingbot, AhrefsBot) and
HTTP libraries and tools (curl, python-requests) are crawlers.

A null, empty or unparsable user agent is "unknown" in every text field and *not* a crawler: a
missing header is no evidence of a bot (privacy proxies and some SDKs strip it), and flagging it
would push real traffic out with the bots; ``device_type == "unknown"`` keeps the case visible.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import pyarrow as pa
from crawlerdetect import CrawlerDetect
from ua_parser import Domain, load_lazy_builtins
from ua_parser.core import OS, Device, UserAgent
from ua_parser.regex import Resolver

from clicklake.platform.enrich.distinct import (
    StringValues,
    as_string_array,
    distinct_values,
    is_text,
    spread,
)

UNKNOWN = "unknown"
DEVICE_TYPES = ("desktop", "mobile", "tablet", "bot", "other", "unknown")


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    device_type: str
    os: str
    browser: str
    is_crawler: bool


UNKNOWN_USER_AGENT = UserAgentInfo(UNKNOWN, UNKNOWN, UNKNOWN, False)

# crawlerdetect runs one large case-insensitive alternation through Python's `re`, whose cost grows
# quadratically on long repetitive text (10 kB of "x" takes seconds). Real user agents are a few
# hundred characters and crawlers name themselves early, so only a prefix is checked.
_CRAWLER_CHECK_LENGTH = 512
# Longer strings are still parsed (ua-parser's Rust engine is linear) but kept out of the LRU so a
# flood of huge headers cannot grow it.
_MAX_CACHED_LENGTH = 1024

# Mobile builds fold into their desktop family: `device_type` already says mobile, and a smaller
# vocabulary gives the model more rows per category.
_BROWSER_ALIASES = {
    "Mobile Safari": "Safari",
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
}
_MOBILE_OS = frozenset({
    "iOS", "Windows Phone", "Windows Mobile", "BlackBerry OS", "Symbian OS", "Symbian^3",
    "KaiOS", "Firefox OS", "Sailfish", "Ubuntu Touch",
})
_DESKTOP_OS = frozenset({
    "Mac OS X", "Linux", "Ubuntu", "Kubuntu", "Xubuntu", "Fedora", "Debian", "Red Hat", "CentOS",
    "Linux Mint", "Mint", "Arch Linux", "Gentoo", "SUSE", "openSUSE", "Slackware", "Mandriva",
    "Chrome OS", "FreeBSD", "OpenBSD", "NetBSD", "Solaris",
})
_NOT_DESKTOP_WINDOWS = ("Windows Phone", "Windows Mobile", "Windows CE", "Windows RT")
# Televisions, consoles and streaming sticks often carry desktop or Android tokens.
_TV_CONSOLE_TOKENS = (
    "smart-tv", "smarttv", "googletv", "android tv", "; tv", " tv safari", "hbbtv", "crkey",
    "appletv", "roku", "bravia", "web0s", "netcast", "playstation", "xbox", "nintendo",
)
_TABLET_TOKENS = ("ipad", "tablet", "kindle", "silk/", "playbook")

_resolver_lock = threading.Lock()
_resolver: Resolver | None = None
_thread_state = threading.local()


def _ua_resolver() -> Resolver:
    global _resolver
    if _resolver is None:
        with _resolver_lock:
            if _resolver is None:
                _resolver = Resolver(load_lazy_builtins())
    return _resolver


def _crawler_detector() -> CrawlerDetect:
    # CrawlerDetect keeps per-call state (`matches`), so each thread gets its own instance.
    detector = getattr(_thread_state, "detector", None)
    if detector is None:
        detector = _thread_state.detector = CrawlerDetect()
    return detector


def _family(part: UserAgent | OS | Device | None) -> str:
    return part.family if part is not None and part.family and part.family != "Other" else UNKNOWN


def _device_type(ua: str, os: str, browser: str, device: Device | None) -> str:
    low = ua.lower()
    device_family = _family(device)
    brand = device.brand if device is not None else None
    if any(token in low for token in _TV_CONSOLE_TOKENS):
        return "other"
    windows = os.startswith("Windows")  # "Tablet PC" in old Windows UAs is a desktop
    if (device_family == "iPad" or brand == "Generic_Android_Tablet"
            or (not windows and any(token in low for token in _TABLET_TOKENS))
            or (os == "Android" and "mobi" not in low)):  # Android tablets omit "Mobile"
        return "tablet"
    if (device_family in ("iPhone", "iPod") or os in _MOBILE_OS or "mobi" in low
            or "iphone" in low or "opera mini" in low):
        return "mobile"
    if (os in _DESKTOP_OS or (windows and not os.startswith(_NOT_DESKTOP_WINDOWS))
            or "x11" in low or "macintosh" in low):
        return "desktop"
    if os == browser == device_family == UNKNOWN:
        return UNKNOWN
    return "other"


def _parse_user_agent(ua: str) -> UserAgentInfo:
    """The one underlying lookup for a (valid UTF-8) user agent string."""
    if not ua.strip():
        return UNKNOWN_USER_AGENT
    is_crawler = _crawler_detector().is_crawler(ua[:_CRAWLER_CHECK_LENGTH])
    parsed = _ua_resolver()(ua, Domain.ALL)
    browser = _family(parsed.user_agent)
    browser = _BROWSER_ALIASES.get(browser, browser)
    os = _family(parsed.os)
    device_type = "bot" if is_crawler else _device_type(ua, os, browser, parsed.device)
    return UserAgentInfo(device_type, os, browser, is_crawler)


def user_agent_fields(uas: StringValues) -> pa.Table:
    """Columns `device_type`, `os`, `browser` (strings) and `is_crawler` (bool), one row per input.

    Each distinct user agent is parsed at most once per call, through the process-wide LRU of
    `user_agent_of` (an hour repeats the last hour's few dozen agents; parsing one costs
    ~0.4 ms); nulls and garbage give `UNKNOWN_USER_AGENT`.
    """
    distinct, indices = distinct_values(as_string_array(uas))
    infos = [_user_agent_cached(ua) if len(ua) <= _MAX_CACHED_LENGTH else _parse_user_agent(ua)
             for ua in distinct]
    return pa.table({
        "device_type": spread([i.device_type for i in infos], UNKNOWN, indices, pa.string()),
        "os": spread([i.os for i in infos], UNKNOWN, indices, pa.string()),
        "browser": spread([i.browser for i in infos], UNKNOWN, indices, pa.string()),
        "is_crawler": spread([i.is_crawler for i in infos], False, indices, pa.bool_()),
    })


@functools.lru_cache(maxsize=16_384)
def _user_agent_cached(ua: str) -> UserAgentInfo:
    return _parse_user_agent(ua)


def user_agent_of(ua: str | None) -> UserAgentInfo:
    """`UserAgentInfo` of one user agent (the REST path), through a bounded process-wide LRU."""
    if not is_text(ua) or not ua:
        return UNKNOWN_USER_AGENT
    if len(ua) > _MAX_CACHED_LENGTH:
        return _parse_user_agent(ua)
    return _user_agent_cached(ua)
