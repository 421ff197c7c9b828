"""Enrichment from IP and user agent: pinned countries and user-agent fields for real inputs,
explicit "unknown" for private, reserved and malformed input, vectorised paths checked row by row
against the single-value helpers, and one lookup per distinct value."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import threading

import iptocc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from depth import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from threads import run_together

from clicklake.platform import enrich
from clicklake.platform.enrich import (
    DEVICE_TYPES,
    UNKNOWN,
    UNKNOWN_USER_AGENT,
    UserAgentInfo,
    countries,
    country_of,
    enrich_impressions,
    user_agent_fields,
    user_agent_of,
)
from clicklake.platform.enrich import country as country_mod
from clicklake.platform.enrich import user_agent as ua_mod

# Addresses from long-standing allocations, checked against the bundled registry data.
PUBLIC_IPS = [
    ("8.8.8.8", "US"),  # Google Public DNS
    ("9.9.9.9", "US"),  # Quad9
    ("193.99.144.80", "DE"),  # heise.de
    ("5.9.0.1", "DE"),  # Hetzner
    ("133.242.0.1", "JP"),  # Sakura Internet
    ("210.140.92.183", "JP"),
    ("200.147.67.142", "BR"),  # UOL
    ("177.71.128.1", "BR"),
    ("14.139.0.1", "IN"),  # National Knowledge Network
    ("49.44.0.1", "IN"),  # Reliance Jio
    ("2001:4860:4860::8888", "US"),  # Google Public DNS over IPv6
    ("2003::1", "DE"),  # Deutsche Telekom
    ("2001:200::1", "JP"),  # WIDE project
    ("2804:14c::1", "BR"),
    ("2405:200::1", "IN"),  # Reliance Jio
]

UNKNOWN_IPS = [
    "10.0.0.1", "10.255.255.254", "192.168.1.1", "172.16.0.1", "172.31.255.1",  # private
    "127.0.0.1", "169.254.1.1",  # loopback, link-local
    "0.0.0.0", "255.255.255.255", "240.0.0.1", "224.0.0.1", "100.64.0.1",  # reserved, multicast
    "192.0.2.1", "198.51.100.1", "203.0.113.1",  # documentation
    "::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
    "999.1.1.1", "1.2.3", "1.2.3.4.5", "8.8.8.8/24", "abc", "", "   ", "\x00", "8.8.8.8x",
    "1" * 10_000, None,
]

UA = {
    "chrome_windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/131.0.0.0 Safari/537.36",
    "safari_iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "chrome_android_phone": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "ipad": "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.5 Mobile/15E148 Safari/604.1",
    "android_tablet": "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/131.0.0.0 Safari/537.36",
    "firefox_linux": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "firefox_android": "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
    "edge": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
    "safari_mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/17.5 Safari/605.1.15",
    "chromebook": "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36",
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot_smartphone": "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) "
    "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "ahrefsbot": "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "curl": "curl/8.5.0",
    "python_requests": "python-requests/2.32.3",
    "smart_tv": "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36",
    "xbox": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/131.0.0.0 Safari/537.36 Edge/44.18363.8131",
}

# crawlerdetect decides is_crawler; HTTP libraries and command-line clients count as crawlers.
UA_EXPECTED = {
    "chrome_windows": UserAgentInfo("desktop", "Windows", "Chrome", False),
    "safari_iphone": UserAgentInfo("mobile", "iOS", "Safari", False),
    "chrome_android_phone": UserAgentInfo("mobile", "Android", "Chrome", False),
    "ipad": UserAgentInfo("tablet", "iOS", "Safari", False),
    "android_tablet": UserAgentInfo("tablet", "Android", "Chrome", False),
    "firefox_linux": UserAgentInfo("desktop", "Linux", "Firefox", False),
    "firefox_android": UserAgentInfo("mobile", "Android", "Firefox", False),
    "edge": UserAgentInfo("desktop", "Windows", "Edge", False),
    "safari_mac": UserAgentInfo("desktop", "Mac OS X", "Safari", False),
    "chromebook": UserAgentInfo("desktop", "Chrome OS", "Chrome", False),
    "googlebot": UserAgentInfo("bot", UNKNOWN, "Googlebot", True),
    "googlebot_smartphone": UserAgentInfo("bot", "Android", "Googlebot", True),
    "bingbot": UserAgentInfo("bot", UNKNOWN, "bingbot", True),
    "ahrefsbot": UserAgentInfo("bot", UNKNOWN, "AhrefsBot", True),
    "curl": UserAgentInfo("bot", UNKNOWN, "curl", True),
    "python_requests": UserAgentInfo("bot", UNKNOWN, "Python Requests", True),
    "smart_tv": UserAgentInfo("other", "Tizen", "Samsung Internet", False),
    "xbox": UserAgentInfo("other", "Windows", "Edge", False),
}

GARBAGE_UAS = ["", "   ", "\x00\x01", "x" * 10_240, "asdf qwer", "Mozilla/5.0", "(" * 5_000,
               "\ud800", None]


@pytest.mark.parametrize(("ip", "expected"), PUBLIC_IPS)
def test_country_of_public_addresses(ip, expected):
    assert country_of(ip) == expected


@pytest.mark.parametrize("ip", UNKNOWN_IPS)
def test_country_of_unplaceable_is_unknown(ip):
    assert country_of(ip) == UNKNOWN


@pytest.mark.parametrize("bad", [12345, b"8.8.8.8", 8.8, object(), "\ud800"])
def test_country_of_non_text_is_unknown(bad):
    assert country_of(bad) == UNKNOWN


@pytest.mark.parametrize(
    ("ip", "expected"),
    [(" 8.8.8.8\n", "US"), ("::ffff:193.99.144.80", "DE"), ("::FFFF:8.8.8.8", "US"),
     ("2001:4860:4860:0:0:0:0:8888", "US"), ("2003:0000::0001", "DE"), ("::ffff:10.0.0.1", UNKNOWN)],
)
def test_country_of_normalises_whitespace_and_ipv4_mapped(ip, expected):
    assert country_of(ip) == expected


# The same address in other spellings (::ffff:0:0/96, RFC 4291): each is its IPv4 address.
@pytest.mark.parametrize(
    ("ip", "expected"),
    [("::ffff:808:808", "US"), ("0:0:0:0:0:ffff:8.8.8.8", "US"), ("0:0:0:0:0:FFFF:0808:0808", "US"),
     ("::ffff:c163:9050", "DE"), (" ::ffff:808:808\t", "US"), ("\u3000::FfFf:808:808", "US"),
     ("::ffff:a00:1", UNKNOWN),  # 10.0.0.1
     ("::ffff:808:808%eth0", UNKNOWN), ("1::ffff:808:808", UNKNOWN), ("ffff::808:808", UNKNOWN),
     ("::ffff:808:808:1", UNKNOWN), ("::ffff:8o8:808", UNKNOWN)],
)
def test_ipv4_mapped_addresses_in_every_spelling_on_both_paths(ip, expected):
    assert country_of(ip) == expected
    assert countries([ip, "8.8.8.8"]).to_pylist() == [expected, "US"]


def _all_ips() -> list[str | None]:
    return [ip for ip, _ in PUBLIC_IPS] + UNKNOWN_IPS + [" 8.8.8.8", "::ffff:5.9.0.1"]


def test_countries_matches_single_value_oracle():
    ips = _all_ips() * 3
    result = countries(ips)
    assert result.type == pa.string()
    assert result.null_count == 0
    assert result.to_pylist() == [country_of(ip) for ip in ips]
    assert result.to_pylist()[: len(PUBLIC_IPS)] == [cc for _, cc in PUBLIC_IPS]


def _country_per_value(ip: str) -> str:
    """The per-value Python definition the vectorised lookup replaced (its test oracle)."""
    if len(ip) > 64:
        ip = ""
    ip = ip.strip()
    if ip[:7].lower() == "::ffff:" and "." in ip:
        ip = ip[7:]
    else:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None and \
                address.scope_id is None:
            ip = str(address.ipv4_mapped)
    code = iptocc.country_code([ip])[0]
    return code if code and len(code) == 2 and code.isalpha() else UNKNOWN


_ADDRESS_PARTS = st.sampled_from(
    ["8.8.8.8", "5.9.0.1", "10.0.0.1", "2003::1", "::ffff:", "::FFFF:", "::fFfF:", "::ff", ".",
     "0:0:0:0:0:", "ffff:", "FfFf:", "509:1", "808:808", "%e",
     ":", "1", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0",
     "\u2028", "\u3000", "\u200b", "\u180e", "\ufeff", "\u212a", "é", "x" * 30])


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.lists(_ADDRESS_PARTS, max_size=6).map("".join), max_size=40))
def test_countries_match_the_per_value_definition(ips):
    want = [_country_per_value(ip) for ip in ips]
    assert countries(ips).to_pylist() == want
    assert [country_of(ip) for ip in ips] == [UNKNOWN if not ip else w
                                              for ip, w in zip(ips, want, strict=True)]


@pytest.mark.parametrize(
    "make",
    [
        lambda v: pa.array(v, pa.string()),
        lambda v: pa.array(v, pa.large_string()),
        lambda v: pa.array(v, pa.string_view()),
        lambda v: pa.array(v, pa.string()).dictionary_encode(),
        lambda v: pa.chunked_array([pa.array(v[:5], pa.string()), pa.array(v[5:], pa.string())]),
        lambda v: pa.chunked_array([pa.array(v[:5], pa.string()).dictionary_encode(),
                                    pa.array(v[5:], pa.string()).dictionary_encode()]),
        lambda v: pa.array([None if s is None else s.encode() for s in v], pa.binary()),
        lambda v: tuple(v),
    ],
    ids=["string", "large_string", "string_view", "dictionary", "chunked", "chunked_dictionary",
         "binary", "tuple"],
)
def test_countries_accepts_arrow_and_python_inputs(make):
    ips = [ip for ip in _all_ips() if ip is None or len(ip) < 100]
    assert countries(make(ips)).to_pylist() == [country_of(ip) for ip in ips]


def test_countries_of_non_text_columns_are_unknown():
    assert countries(pa.nulls(3)).to_pylist() == [UNKNOWN] * 3
    assert countries(pa.array([1, 2], pa.int64())).to_pylist() == [UNKNOWN] * 2
    assert countries(["8.8.8.8", 7, None, b"5.9.0.1"]).to_pylist() == ["US", UNKNOWN, UNKNOWN, "DE"]
    assert countries([]).to_pylist() == []
    assert countries(np.array([1, 2])).to_pylist() == [UNKNOWN] * 2
    assert countries(pd.Series(["8.8.8.8", None, 3])).to_pylist() == ["US", UNKNOWN, UNKNOWN]
    assert countries(pa.chunked_array([], pa.string())).to_pylist() == []


def test_dictionary_with_repeated_values_resolves_each_once(monkeypatch):
    calls = _count_country_lookups(monkeypatch)
    column = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 2, None, 1]), pa.array(["8.8.8.8", "8.8.8.8", None])
    )
    assert countries(column).to_pylist() == ["US", "US", UNKNOWN, UNKNOWN, "US"]
    assert calls == ["8.8.8.8"]


@pytest.mark.parametrize("name", sorted(UA_EXPECTED))
def test_user_agent_of_real_agents(name):
    assert user_agent_of(UA[name]) == UA_EXPECTED[name]


@pytest.mark.parametrize("ua", GARBAGE_UAS, ids=lambda u: repr(u)[:20])
def test_garbage_user_agents_are_unknown(ua):
    assert user_agent_of(ua) == UNKNOWN_USER_AGENT
    assert user_agent_fields([ua]).to_pylist() == [
        {"device_type": UNKNOWN, "os": UNKNOWN, "browser": UNKNOWN, "is_crawler": False}
    ]


def test_non_text_user_agents_are_unknown():
    assert user_agent_of(42) == UNKNOWN_USER_AGENT
    assert user_agent_fields(pa.nulls(2)).column("device_type").to_pylist() == [UNKNOWN] * 2
    assert user_agent_fields([UA["curl"], 3.5]).column("is_crawler").to_pylist() == [True, False]


def test_user_agent_fields_matches_single_value_oracle():
    uas = (list(UA.values()) + GARBAGE_UAS[:-2] + [None]) * 2
    table = user_agent_fields(uas)
    assert table.schema == pa.schema([("device_type", pa.string()), ("os", pa.string()),
                                      ("browser", pa.string()), ("is_crawler", pa.bool_())])
    assert table.to_pylist() == [vars_of(user_agent_of(ua)) for ua in uas]


def vars_of(info: UserAgentInfo) -> dict:
    return {"device_type": info.device_type, "os": info.os, "browser": info.browser,
            "is_crawler": info.is_crawler}


def test_bot_device_type_iff_crawler():
    for ua in list(UA.values()) + GARBAGE_UAS:
        info = user_agent_of(ua)
        assert info.device_type in DEVICE_TYPES
        assert (info.device_type == "bot") == info.is_crawler


def test_user_agent_info_is_frozen():
    with pytest.raises(AttributeError):
        UNKNOWN_USER_AGENT.os = "Linux"


def _count_country_lookups(monkeypatch) -> list[str]:
    """The addresses handed to iptocc (the column path and the single-value path both ask it)."""
    calls: list[str] = []
    real = country_mod.iptocc.country_code

    def counting(ips):
        calls.extend(ips)
        return real(ips)

    monkeypatch.setattr(country_mod.iptocc, "country_code", counting)
    return calls


def _count_ua_lookups(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = ua_mod._parse_user_agent

    def counting(ua):
        calls.append(ua)
        return real(ua)

    monkeypatch.setattr(ua_mod, "_parse_user_agent", counting)
    return calls


def test_each_distinct_value_is_resolved_once_per_call(monkeypatch):
    ip_pool = [f"5.9.{i}.1" for i in range(25)] + [f"10.0.{i}.1" for i in range(25)]
    ua_pool = [f"{UA['chrome_windows']} build/{i}" for i in range(49)] + [UA["googlebot"]]
    n = 100_000
    # Every 7th row null: nulls are not values and cost no lookup.
    ips = [None if i % 7 == 0 else ip_pool[i % 50] for i in range(n)]
    uas = [None if i % 7 == 3 else ua_pool[(i * 3) % 50] for i in range(n)]
    table = pa.table({"ip": pa.array(ips, pa.string()), "user_agent": pa.array(uas, pa.string())})

    ua_mod._user_agent_cached.cache_clear()
    ip_calls = _count_country_lookups(monkeypatch)
    ua_calls = _count_ua_lookups(monkeypatch)
    out = enrich_impressions(table)
    assert sorted(ip_calls) == sorted(ip_pool)
    assert sorted(ua_calls) == sorted(ua_pool)
    # User agents parsed once stay in the process-wide LRU: the next hour parses none again.
    assert enrich_impressions(table).equals(out)
    assert sorted(ua_calls) == sorted(ua_pool)

    expected_country = {ip: ("DE" if ip.startswith("5.9.") else UNKNOWN) for ip in ip_pool}
    assert out.column("country").to_pylist() == [
        UNKNOWN if ip is None else expected_country[ip] for ip in ips
    ]
    crawler = out.column("is_crawler").to_pylist()
    assert crawler == [ua == UA["googlebot"] for ua in uas]
    assert sum(crawler) == sum(1 for i in range(n) if i % 7 != 3 and (i * 3) % 50 == 49)


def test_single_value_helpers_use_a_bounded_lru(monkeypatch):
    country_mod._country_cached.cache_clear()
    ua_mod._user_agent_cached.cache_clear()
    ip_calls = _count_country_lookups(monkeypatch)
    ua_calls = _count_ua_lookups(monkeypatch)
    for _ in range(5):
        assert country_of("8.8.8.8") == "US"
        assert user_agent_of(UA["bingbot"]).is_crawler
    assert ip_calls == ["8.8.8.8"]
    assert ua_calls == [UA["bingbot"]]
    assert country_mod._country_cached.cache_info().maxsize == 65_536
    assert ua_mod._user_agent_cached.cache_info().maxsize == 16_384
    # Oversized user agents bypass the cache so they cannot fill it.
    user_agent_of("y" * 2_000)
    user_agent_of("y" * 2_000)
    assert ua_calls.count("y" * 2_000) == 2


def test_concurrent_callers_get_the_sequential_answers():
    ips = _all_ips()
    uas = list(UA.values()) + GARBAGE_UAS[:3]
    want_ips = countries(ips).to_pylist()
    want_uas = [user_agent_of(ua) for ua in uas]
    country_mod._country_cached.cache_clear()
    ua_mod._user_agent_cached.cache_clear()
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(20):
            if countries(ips).to_pylist() != want_ips or \
                    [country_of(ip) for ip in ips] != want_ips:
                errors.append("country")
            if [user_agent_of(ua) for ua in uas] != want_uas or \
                    user_agent_fields(uas).to_pylist() != [vars_of(w) for w in want_uas]:
                errors.append("user agent")

    run_together(*[worker] * 8)
    assert errors == []


def test_enrich_impressions_appends_columns():
    table = pa.table({
        "impression_id": ["a", "b", "c", "d"],
        "ip": ["8.8.8.8", "192.168.0.1", None, "2003::1"],
        "user_agent": [UA["safari_iphone"], None, UA["ahrefsbot"], ""],
    })
    out = enrich_impressions(table)
    assert out.column_names == ["impression_id", "ip", "user_agent", *enrich.ENRICHED_COLUMNS]
    assert out.select(["impression_id", "ip", "user_agent"]).equals(table)
    assert out.column("country").to_pylist() == ["US", UNKNOWN, UNKNOWN, "DE"]
    assert out.column("device_type").to_pylist() == ["mobile", UNKNOWN, "bot", UNKNOWN]
    assert out.column("os").to_pylist() == ["iOS", UNKNOWN, UNKNOWN, UNKNOWN]
    assert out.column("browser").to_pylist() == ["Safari", UNKNOWN, "AhrefsBot", UNKNOWN]
    assert out.column("is_crawler").to_pylist() == [False, False, True, False]
    assert enrich_impressions(out).equals(out)  # enriching twice changes nothing


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"impression_id": ["a", "b"]}),
        pa.table({"impression_id": ["a", "b"], "ip": pa.nulls(2), "user_agent": pa.nulls(2)}),
        pa.table({"impression_id": ["a", "b"], "ip": pa.array([None, None], pa.string()),
                  "user_agent": pa.array([None, None], pa.string())}),
    ],
    ids=["absent", "null_typed", "all_null"],
)
def test_enrich_impressions_without_ip_or_user_agent(table):
    out = enrich_impressions(table)
    for name in ("country", "device_type", "os", "browser"):
        assert out.column(name).to_pylist() == [UNKNOWN, UNKNOWN]
    assert out.column("is_crawler").to_pylist() == [False, False]
    assert out.schema.field("is_crawler").type == pa.bool_()


def test_enrich_impressions_empty_table():
    empty = pa.table({"ip": pa.array([], pa.string()), "user_agent": pa.array([], pa.string())})
    out = enrich_impressions(empty)
    assert out.num_rows == 0
    assert out.column_names == ["ip", "user_agent", *enrich.ENRICHED_COLUMNS]


@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=60)), max_size=20))
def test_any_text_gives_a_valid_answer(values):
    codes = countries(values).to_pylist()
    assert codes == [country_of(v) for v in values]
    assert all(c == UNKNOWN or (len(c) == 2 and c.isalpha() and c.isupper()) for c in codes)
    fields = user_agent_fields(values)
    assert fields.num_rows == len(values)
    assert fields.to_pylist() == [vars_of(user_agent_of(v)) for v in values]


def test_engine_module_imports_no_orchestration_or_cloud_sdk():
    code = ("import sys, clicklake.platform.enrich as e; e.user_agent_of('curl/8'); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'boto3', 'fastapi'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_chunked_dictionaries_holding_a_null_enrich_as_one_chunk_does():
    """Arrow cannot unify dictionaries holding a null ("Cannot yet unify dictionaries with
    nulls"): a column of two such chunks failed the whole batch where one chunk worked."""
    d = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()),
                                       pa.array(["curl/8.4.0", None]))
    ips = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()),
                                         pa.array(["8.8.8.8", None]))
    two = pa.chunked_array([d, d])
    assert user_agent_fields(two).to_pylist() == user_agent_fields(d).to_pylist() * 2
    assert countries(pa.chunked_array([ips, ips])).to_pylist() == countries(
        ips).to_pylist() * 2 == ["US", "unknown", "US"] * 2
