"""Bad input to the REST API gets a 4xx with a message, never a 500: a battery of invalid fields,
malformed and non-object JSON, the 16 KiB body cap (with and without Content-Length), bearer-token
authentication, and a property test throwing arbitrary JSON at /v1/predict."""

from __future__ import annotations

import warnings

import pytest
from depth import examples
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import GOOGLEBOT, built_lake

from clicklake.platform.storage import Store
from clicklake.serving import ServingConfig, lake_app

OK = {"user_id": "u0000300", "campaign_id": "cmp-0016"}
TOKEN = "tok-0123456789abcdef"


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Store:
    return Store(built_lake(tmp_path_factory))


@pytest.fixture(scope="module")
def client(lake):
    return TestClient(lake_app(lake))


@pytest.fixture(scope="module")
def secured(lake):
    return TestClient(lake_app(lake, config=ServingConfig(token=TOKEN)))


BAD = [
    ({}, "user_id"),
    ({"campaign_id": "c"}, "user_id"),
    ({"user_id": "u"}, "campaign_id"),
    ({**OK, "user_id": ""}, "user_id"),
    ({**OK, "user_id": "x" * 129}, "user_id"),
    ({**OK, "user_id": 42}, "user_id"),
    ({**OK, "user_id": None}, "user_id"),
    ({**OK, "user_id": ["u"]}, "user_id"),
    ({**OK, "user_id": "a\nb"}, "user_id"),
    ({**OK, "campaign_id": {"id": 1}}, "campaign_id"),
    ({**OK, "user_id": " \t"}, "user_id"),
    ({**OK, "ts": "yesterday"}, "ts"),
    ({**OK, "ts": "2026-13-45T00:00:00Z"}, "ts"),
    ({**OK, "ts": 1_700_000_000}, "ts"),  # seconds, not milliseconds
    ({**OK, "ts": -5}, "ts"),
    ({**OK, "ts": 10**30}, "ts"),
    ({**OK, "ts": 1.7e12}, "ts"),
    ({**OK, "ts": True}, "ts"),
    ({**OK, "ts": "2999-01-01T00:00:00Z"}, "ts"),
    ({**OK, "ts": "9" * 41}, "ts"),
    ({**OK, "ts": "2026-11-24+05:00"}, "ts"),  # a date and an offset: no time (was 05:00)
    ({**OK, "ts": "2026-11-24"}, "ts"),  # a date alone: an impression has a time of day
    ({**OK, "ts": "\u0661\u0667\u0669\u0665\u0665\u0667\u0663\u0668\u0660\u0660\u0660\u0660\u0660"}, "ts"),
    ({**OK, "ip": "999.1.1.1"}, "ip"),
    ({**OK, "ip": "not-an-ip"}, "ip"),
    ({**OK, "ip": 12345}, "ip"),
    ({**OK, "user_agent": "x" * 2049}, "user_agent"),
    ({**OK, "domain": "d" * 254}, "domain"),
    ({**OK, "cost": -0.01}, "cost"),
    ({**OK, "cost": "0.5"}, "cost"),
    ({**OK, "cost": 1e7}, "cost"),
    ({**OK, "cost": True}, "cost"),
    ({**OK, "value_per_click": -1}, "value_per_click"),
    ({**OK, "value_per_click": [1]}, "value_per_click"),
    ({**OK, "user_agnet": GOOGLEBOT}, "user_agnet"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD)])
def test_invalid_fields_are_422_naming_the_field(client, body, field):
    resp = client.post("/v1/predict", json=body)
    assert resp.status_code == 422, resp.text
    out = resp.json()
    assert out["code"] == "invalid_request" and field in out["detail"]
    assert any(field in e["loc"] for e in out["errors"])


@pytest.mark.parametrize("raw", [b"", b"{", b'{"user_id": "u",}', b"null", b"[]", b'"text"',
                                 b"42", b"\xff\xfe", b'{"user_id": NaN}'])
def test_malformed_or_non_object_json_is_422(client, raw):
    resp = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_body_not_declared_as_json_is_422(client, content_type):
    raw = b'{"user_id": "u0000300", "campaign_id": "cmp-0016"}'
    resp = client.post("/v1/predict", content=raw,
                       headers={"content-type": content_type} if content_type else {})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["loc"] == ["body"] and "JSON" in resp.json()["detail"]
    for declared in ("application/json; charset=utf-8", "application/merge-patch+json"):
        assert client.post("/v1/predict", content=raw,
                           headers={"content-type": declared}).status_code == 200, declared


@pytest.mark.parametrize("cost", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_money_is_422(client, cost):
    raw = f'{{"user_id": "u", "campaign_id": "c", "cost": {cost}}}'.encode()
    resp = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and "cost" in resp.json()["detail"]


def test_valid_edge_values_are_accepted(client):
    for extra in ({"ts": "2026-11-24T02:30:00"}, {"ts": "1795573800000"}, {"ip": "2001:db8::1"},
                  {"cost": 0}, {"value_per_click": 0, "cost": 0}, {"user_id": "ü" * 128},
                  {"impression_id": None, "domain": None, "ip": None, "user_agent": None}):
        resp = client.post("/v1/predict", json={**OK, **extra})
        assert resp.status_code == 200, (extra, resp.text)


def test_body_cap_413_before_parsing(client):
    pad = "x" * (16 * 1024)
    resp = client.post("/v1/predict", json={**OK, "user_agent": pad})
    assert resp.status_code == 413 and "16384" in resp.json()["detail"]

    def chunks():  # no Content-Length: the cap is enforced while the body streams in
        yield b'{"user_id": "u", "campaign_id": "c", "domain": "'
        for _ in range(40):
            yield b"d" * 1024
        yield b'"}'

    resp = client.post("/v1/predict", content=chunks(),
                       headers={"content-type": "application/json"})
    assert resp.status_code == 413
    resp = client.post("/v1/predict", content=b"{}",
                       headers={"content-type": "application/json", "content-length": "abc"})
    assert resp.status_code in (400, 413)


def test_body_exactly_at_the_cap_is_parsed(lake):
    c = TestClient(lake_app(lake, config=ServingConfig(max_body_bytes=300)))
    raw = b'{"user_id": "u0000300", "campaign_id": "cmp-0016", "domain": "'
    raw += b"d" * (300 - len(raw) - 2) + b'"}'
    assert len(raw) == 300
    assert c.post("/v1/predict", content=raw,
                  headers={"content-type": "application/json"}).status_code == 200
    assert c.post("/v1/predict", content=raw + b" ",
                  headers={"content-type": "application/json"}).status_code == 413


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Bearer {TOKEN}x"},
                                     {"Authorization": "Bearer"}])
def test_token_required_when_configured(secured, headers):
    for method, path in (("post", "/v1/predict"), ("get", "/v1/users/u0000300/profile"),
                         ("get", "/metrics")):
        resp = getattr(secured, method)(path, headers=headers,
                                        **({"json": OK} if method == "post" else {}))
        assert resp.status_code == 401, (path, resp.text)
        assert resp.json()["detail"] and resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", ["s3cret\n", " s3cret", "s3cret ", "s3c ret", "sécret",
                                   "s3cret\x00"])
def test_a_token_that_no_request_could_carry_is_refused_at_startup(lake, token):
    # Header bytes read as Latin-1 and a request's token stripped: the server started, said a
    # token was required, and answered 401 to the exact token and to the stripped one.
    with pytest.raises(ValueError, match="visible ASCII"):
        lake_app(lake, config=ServingConfig(token=token))


def test_any_visible_ascii_token_is_taken_and_matched(lake):
    token = "A-z0._~+/!#$%&'*=?^`{|}" + '"(),:;<>@[\\]'
    c = TestClient(lake_app(lake, config=ServingConfig(token=token)))
    assert c.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert c.get("/metrics", headers={"Authorization": f"Bearer {token}x"}).status_code == 401


def test_right_token_passes_and_health_and_docs_are_open(secured):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert secured.post("/v1/predict", json=OK, headers=auth).status_code == 200
    assert secured.get("/v1/users/u0000300/profile", headers=auth).status_code == 200
    assert secured.get("/metrics", headers=auth).status_code == 200
    assert secured.get("/healthz").status_code == 200
    # the docs page and its Swagger UI files come from this server (no CDN: works offline)
    page = secured.get("/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
        assert asset in page.text
        got = secured.get(asset)
        assert got.status_code == 200 and len(got.content) > 10_000, asset
    spec = secured.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/users/{user_id}/profile", "/healthz", "/metrics"} <= set(
        spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    predict = spec["paths"]["/v1/predict"]["post"]  # its body is read by the handler itself
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert schema["title"] == "PredictRequest" and schema["required"] == ["user_id", "campaign_id"]
    assert {"ts", "ip", "user_agent", "cost", "value_per_click"} <= set(schema["properties"])
    assert predict["security"] == [{"HTTPBearer": []}]


def test_every_operation_id_is_unique(lake):
    # GET and HEAD /healthz were one route: one operationId for both, which FastAPI warned of
    # and client generators refuse. The document is made fresh here, warnings as errors.
    app = lake_app(lake)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = TestClient(app).get("/openapi.json").json()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), ids
    assert set(spec["paths"]["/healthz"]) == {"get"}
    assert TestClient(app).head("/healthz").status_code == 200


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/v2/nothing").json()["code"] == "not_found"
    resp = client.get("/v1/predict")
    assert resp.status_code == 405 and resp.json()["code"] == "method_not_allowed"


def test_a_trailing_slash_is_not_redirected_to_the_hosts_the_request_names(client):
    """A trailing slash answered 307 to the same path on the Host header's host (an open
    redirect, replayed with its body by clients, before any token check)."""
    resp = client.post("/v1/predict/", json={}, headers={"Host": "evil.example"},
                       follow_redirects=False)
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    assert "location" not in resp.headers


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)
_fields = st.sampled_from(["user_id", "campaign_id", "impression_id", "ts", "domain", "ip",
                           "user_agent", "cost", "value_per_click", "extra"])


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_json, st.dictionaries(_fields, _json, max_size=6)))
def test_arbitrary_json_never_500(client, body):
    resp = client.post("/v1/predict", json=body)
    assert resp.status_code in (200, 422), resp.text
    assert resp.json()


def test_a_response_is_counted_before_it_is_sent():
    """A client holding its answer, then reading /metrics from another worker, must find it
    counted: the count is made when the response starts, not after its body (and a request
    that fails before answering is counted as a 500)."""
    import asyncio

    from clicklake.serving.metrics import ApiMetrics
    from clicklake.serving.middleware import RequestMetrics

    metrics = ApiMetrics(multiprocess=False)

    def counted(status: str) -> float:
        return metrics.registry.get_sample_value(
            "clicklake_api_requests_total",
            {"method": "GET", "route": "unmatched", "status": status}) or 0.0

    async def answer(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def fail(scope, receive, send):
        raise RuntimeError("boom")

    seen = []

    async def send(message):
        if message["type"] == "http.response.start":
            seen.append(counted("204"))

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/nowhere", "headers": []}
    asyncio.run(RequestMetrics(answer, metrics)(scope, receive, send))
    assert seen == [1.0] and counted("204") == 1.0
    with pytest.raises(RuntimeError):
        asyncio.run(RequestMetrics(fail, metrics)(dict(scope), receive, send))
    assert counted("500") == 1.0


# -- characters that forge or hide text, headers, metrics labels, the CLI's numbers ----------------

INVISIBLE = [
    ({**OK, "user_id": "a\x85b"}, "user_id"),  # C1 next line
    ({**OK, "campaign_id": "c\u2028"}, "campaign_id"),  # line separator
    ({**OK, "impression_id": "\ufeffi-1"}, "impression_id"),  # byte order mark
    ({**OK, "domain": "evil\u202emoc.example"}, "domain"),  # right-to-left override
    ({**OK, "user_agent": "Mozilla/5.0\r\nX-Forged: 1"}, "user_agent"),
    ({**OK, "user_agent": "curl\x00"}, "user_agent"),
    ({**OK, "ip": "fe80::1%eth0"}, "ip"),  # a scope id: a local interface name, free text
    ({**OK, "user_id": "u1\u200b"}, "user_id"),  # zero-width space: "u1" to the eye
    ({**OK, "campaign_id": "\u200ec-1"}, "campaign_id"),  # left-to-right mark
    ({**OK, "domain": "a\u2060.example"}, "domain"),  # word joiner
    ({**OK, "user_agent": "Mozilla\u061c/5.0"}, "user_agent"),  # Arabic letter mark
]


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"user_id":"u0000300","campaign_id":"cmp-0016","cost":100,"cost":0}', "cost"),
    ((b'{"user_id":"u0000300","campaign_id":"cmp-0016","user_agent":"Googlebot/2.1",'
      b'"\\u0075ser_agent":"Mozilla/5.0"}'), "user_agent"),  # the same key, escaped
])
def test_a_field_given_twice_is_422(client, raw, field):
    # The last copy won silently, where a proxy or a log reader may take the first: a crawler
    # scored as a browser, a $100 impression served at cost 0.
    resp = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert f"{field}: given twice" in resp.json()["detail"], resp.text
    once = raw.replace(b',"cost":0', b"").replace(b',"\\u0075ser_agent":"Mozilla/5.0"', b"")
    assert client.post("/v1/predict", content=once,
                       headers={"content-type": "application/json"}).status_code == 200


@pytest.mark.parametrize(("body", "field"), INVISIBLE,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(INVISIBLE)])
def test_control_and_invisible_characters_are_422(client, body, field):
    test_invalid_fields_are_422_naming_the_field(client, body, field)
    if field != "ip":  # said plainly, not as the regular expression of a character class
        detail = client.post("/v1/predict", json=body).json()["detail"]
        assert "control characters" in detail and "pattern" not in detail, detail


def test_empty_user_agent_and_plain_unicode_are_accepted(client):
    for extra in ({"user_agent": ""}, {"domain": "bücher.example"}, {"user_id": "用户-7"}):
        resp = client.post("/v1/predict", json={**OK, **extra})
        assert resp.status_code == 200, (extra, resp.text)


@pytest.mark.parametrize("user_id", ["a%C2%85b", "u%E2%80%A8", "u%E2%80%AE", "u1%E2%80%8B"])
def test_profile_path_with_invisible_characters_is_422(client, user_id):
    resp = client.get(f"/v1/users/{user_id}/profile")
    assert resp.status_code == 422 and "control characters" in resp.json()["detail"]


@pytest.mark.parametrize("order", ["good_first", "bad_first"])
def test_two_authorization_headers_are_refused_on_every_route(secured, order):
    good, bad = f"Bearer {TOKEN}", "Bearer wrong"
    pair = [good, bad] if order == "good_first" else [bad, good]
    headers = [("Authorization", v) for v in pair]
    for method, path in (("post", "/v1/predict"), ("get", "/v1/users/u0000300/profile"),
                         ("get", "/metrics")):
        resp = secured.request(method.upper(), path, headers=headers,
                               **({"json": OK} if method == "post" else {}))
        assert resp.status_code == 401, (path, resp.text)
        assert "more than one Authorization header" in resp.json()["detail"]


def _requests_counted(metrics, **labels) -> float:
    return sum(s.value for family in metrics.registry.collect() for s in family.samples
               if s.name == "clicklake_api_requests_total"
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_made_up_http_methods_share_one_metrics_label(lake):
    app = lake_app(lake)
    c = TestClient(app)
    for method in ("BREW", "PROPFIND", "X-CUSTOM", "BREW"):
        assert c.request(method, "/v1/predict").status_code in (400, 405)
    metrics = app.state.metrics
    assert _requests_counted(metrics, method="other") == 4
    methods = {s.labels["method"] for f in metrics.registry.collect() for s in f.samples
               if s.name == "clicklake_api_requests_total"}
    assert methods == {"other"}


def test_a_client_that_leaves_mid_upload_is_counted_as_499_not_500(lake):
    import asyncio

    app = lake_app(lake)
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict",
             "query_string": b"", "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", b"40")],
             "http_version": "1.1", "scheme": "http", "server": ("test", 80),
             "client": ("test", 1), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    assert sent == []  # nobody to answer
    metrics = app.state.metrics
    assert _requests_counted(metrics, route="/v1/predict", status="499") == 1
    assert _requests_counted(metrics, status="500") == 0


def test_a_content_length_of_thousands_of_digits_is_413():
    import asyncio

    from clicklake.serving.middleware import BodyLimit

    async def never(scope, receive, send):
        raise AssertionError("the app must not be reached")

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/predict",
             "headers": [(b"content-length", b"9" * 5000)]}
    asyncio.run(BodyLimit(never, 16 * 1024)(scope, receive, send))
    assert sent[0]["status"] == 413


@pytest.mark.parametrize("args", [["--farm-ctr", "nan"], ["--value-per-click", "nan"],
                                  ["--reload-every", "inf"], ["--startup-timeout", "nan"],
                                  ["--value-per-click", "-inf"]])
def test_serve_refuses_non_finite_numbers(args):
    from click.testing import CliRunner

    from clicklake.cli.serve import serve

    # --port -1 after it: were the number let through, the command still stops (no server)
    result = CliRunner().invoke(serve, [*args, "--port", "-1"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[0]}'" in result.output
