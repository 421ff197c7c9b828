"""User agents: real-looking browsers on desktop, phone and tablet, and well-known crawlers.

Each browser agent carries what an enrichment step can read back from it (device type, OS,
browser) and a small click-propensity effect, so the click model depends only on observable
values. Crawler agents name themselves as their operators publish them, and come from the
operators' own address ranges.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BrowserAgent:
    ua: str
    device: str  # desktop | mobile | tablet
    os: str
    browser: str
    share: float
    ctr_effect: float  # additive, on the logit


@dataclass(frozen=True)
class CrawlerAgent:
    ua: str
    name: str
    share: float
    country: str  # where the operator's published range is allocated
    cidrs: tuple[str, ...]


_WIN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"
_LINUX = "Mozilla/5.0 (X11; Linux x86_64)"
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"

BROWSERS: tuple[BrowserAgent, ...] = (
    # Windows desktop
    BrowserAgent(f"{_WIN} {_WEBKIT} Chrome/131.0.0.0 Safari/537.36",
                 "desktop", "Windows", "Chrome", 0.14, 0.00),
    BrowserAgent(f"{_WIN} {_WEBKIT} Chrome/130.0.0.0 Safari/537.36",
                 "desktop", "Windows", "Chrome", 0.06, 0.00),
    BrowserAgent(f"{_WIN} {_WEBKIT} Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                 "desktop", "Windows", "Edge", 0.06, 0.05),
    BrowserAgent("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
                 "desktop", "Windows", "Firefox", 0.03, -0.15),
    # macOS desktop
    BrowserAgent(f"{_MAC} AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
                 "desktop", "Mac OS X", "Safari", 0.05, -0.05),
    BrowserAgent(f"{_MAC} {_WEBKIT} Chrome/131.0.0.0 Safari/537.36",
                 "desktop", "Mac OS X", "Chrome", 0.05, -0.05),
    BrowserAgent("Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 "
                 "Firefox/133.0", "desktop", "Mac OS X", "Firefox", 0.01, -0.20),
    # Linux desktop
    BrowserAgent(f"{_LINUX} {_WEBKIT} Chrome/131.0.0.0 Safari/537.36",
                 "desktop", "Linux", "Chrome", 0.015, -0.25),
    BrowserAgent("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
                 "desktop", "Ubuntu", "Firefox", 0.01, -0.35),
    # Android phones
    BrowserAgent("Mozilla/5.0 (Linux; Android 10; K) " + _WEBKIT
                 + " Chrome/131.0.6778.81 Mobile Safari/537.36",
                 "mobile", "Android", "Chrome", 0.16, 0.30),
    BrowserAgent("Mozilla/5.0 (Linux; Android 14; SM-S921B) " + _WEBKIT
                 + " Chrome/130.0.6723.107 Mobile Safari/537.36",
                 "mobile", "Android", "Chrome", 0.05, 0.30),
    BrowserAgent("Mozilla/5.0 (Linux; Android 14; SM-A546B) " + _WEBKIT
                 + " SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
                 "mobile", "Android", "Samsung Internet", 0.04, 0.35),
    BrowserAgent("Mozilla/5.0 (Linux; Android 13; Pixel 7) " + _WEBKIT
                 + " Chrome/131.0.6778.39 Mobile Safari/537.36",
                 "mobile", "Android", "Chrome", 0.03, 0.25),
    BrowserAgent("Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
                 "mobile", "Android", "Firefox", 0.01, 0.10),
    # iPhone and iPad
    BrowserAgent("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                 "mobile", "iOS", "Safari", 0.14, 0.20),
    BrowserAgent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
                 "mobile", "iOS", "Safari", 0.05, 0.20),
    BrowserAgent("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
                 "mobile", "iOS", "Chrome", 0.03, 0.15),
    BrowserAgent("Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                 "tablet", "iOS", "Safari", 0.03, 0.10),
    BrowserAgent("Mozilla/5.0 (Linux; Android 13; SM-X200) " + _WEBKIT
                 + " Chrome/131.0.6778.81 Safari/537.36",
                 "tablet", "Android", "Chrome", 0.015, 0.05),
)

# The click farms studied in the wild run cheap Android phones.
FARM_BROWSERS: tuple[int, ...] = tuple(
    i for i, b in enumerate(BROWSERS) if b.os == "Android" and b.device == "mobile"
)

CRAWLERS: tuple[CrawlerAgent, ...] = (
    CrawlerAgent("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                 "Googlebot", 0.30, "US", ("66.249.64.0/20",)),
    CrawlerAgent("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
                 "(KHTML, like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 "
                 "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                 "Googlebot smartphone", 0.20, "US", ("66.249.64.0/20",)),
    CrawlerAgent("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
                 "bingbot", 0.20, "US", ("157.55.39.0/24", "207.46.13.0/24", "40.77.167.0/24")),
    CrawlerAgent("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
                 "AhrefsBot", 0.15, "FR", ("54.36.148.0/23",)),
    CrawlerAgent("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; "
                 "+http://www.apple.com/go/applebot)",
                 "Applebot", 0.08, "US", ("17.58.98.0/24",)),
    CrawlerAgent("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
                 "SemrushBot", 0.07, "GB", ("185.191.171.0/24",)),
)
