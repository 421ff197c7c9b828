"""The REST API: `create_app(...)` builds the FastAPI application `clicklake serve` runs.

    POST /v1/predict                 impression context -> click probability + serve/skip
    GET  /v1/users/{user_id}/profile now (the feature source) or ?as_of= (time travel, the lake)
    GET  /healthz                    model loaded, source watermark (no token needed)
    GET  /metrics                    Prometheus text
    GET  /docs, /openapi.json        OpenAPI

The hot path reads memory only: the model and manifest are loaded at startup and swapped by a
background task when the registry's champion changes; features come from the online source.
Handlers are `async def` and do not await: a one-row prediction is shorter than a hop to the
thread pool would be. What waits on the network or on files runs in the thread pool, so other
requests are not held behind it: a remote model (SageMaker), the lake's features (Parquet reads
unless memoised) and time-travel profiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from clicklake.platform.decision import DecisionPolicy, UserActivity, decide
from clicklake.platform.features import compute_features
from clicklake.platform.lookup import LookupTable, NoSnapshots, SnapshotUnavailable
from clicklake.platform.online import BeforeHorizon, SqliteState
from clicklake.platform.online.read import OnlineFeatures as OnlineStoreFeatures
from clicklake.platform.online.read import Rebuilding
from clicklake.platform.online.state import StaleLayout
from clicklake.platform.timeutil import iso
from clicklake.resources.endpoint import ServedByAnotherModel
from clicklake.resources.online_store import TornRead
from clicklake.serving.auth import authorize, check_token, require_token
from clicklake.serving.metrics import ApiMetrics
from clicklake.serving.middleware import BodyLimit, RequestMetrics, client_gone
from clicklake.serving.model import LoadedModel, ModelSlot
from clicklake.serving.schemas import (
    ErrorOut,
    HealthOut,
    ModelOut,
    PredictRequest,
    PredictResponse,
    ProfileOut,
    has_control_characters,
    iso_or_none,
    now_ms,
    parse_ts,
)
from clicklake.serving.sources import LakeFeatures, LazyLakeFeatures, OnlineFeatures

MAX_BODY_BYTES = 16 * 1024


@dataclass
class ServingConfig:
    token: str | None = None  # bearer token; None = no authentication
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)
    max_body_bytes: int = MAX_BODY_BYTES
    reload_every_s: float = 30.0  # how often the champion pointer and the source are re-checked

    def __post_init__(self) -> None:
        self.token = check_token(self.token)


def _model_out(m: LoadedModel) -> ModelOut:
    return ModelOut(id=m.model_id, promoted_at=m.promoted_at, backend=m.backend)


def _plain(key: str, value):
    """JSON-ready profile fields: instants (the `*_ts` fields) as ISO-8601, the rest as
    `_plain_value`."""
    return iso_or_none(value) if key.endswith("_ts") else _plain_value(value)


def _plain_value(value):
    """numpy scalars as Python numbers, inside dicts too. Nested keys are data, not field
    names: a campaign id may end in "_ts"."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def _offline_docs(app: FastAPI) -> None:
    """/docs with the Swagger UI files of the `swagger-ui-bundle` package: FastAPI's default
    page loads them from a CDN, and stays blank on a machine without internet access."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png")


def _is_json(content_type: str | None) -> bool:
    """application/json or application/<anything>+json, parameters aside (FastAPI's rule)."""
    kind = (content_type or "").partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/")
                                          and kind.endswith("+json"))


def _predict_request(raw: bytes, content_type: str | None) -> PredictRequest:
    """The body parsed and validated in one pass over the raw bytes (pydantic's own JSON
    parser), instead of FastAPI's `json.loads` then validation of the Python objects. Errors
    are located under `body` as FastAPI locates them; a body not declared as JSON is refused,
    as FastAPI refuses it."""
    if not _is_json(content_type):
        raise RequestValidationError([{
            "type": "model_attributes_type", "loc": ("body",),
            "msg": f"a JSON object is expected (Content-Type: application/json, "
                   f"not {content_type or 'none'})"}])
    try:
        request = PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([
            {**e, "loc": ("body", *e["loc"])}
            for e in exc.errors(include_url=False, include_context=False)]) from None
    if (twice := _a_key_twice(raw)) is not None:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("body", twice),
            "msg": "given twice: send each field once"}])
    return request


def _a_key_twice(raw: bytes) -> str | None:
    """A key the body's object holds twice (pydantic keeps the last copy silently, where a
    proxy or a log reader may take the first: `{"cost": 100, "cost": 0}` was served at cost
    0), None otherwise. A second parse of a valid body: ~5 us."""
    twice: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in items]
        if len(set(keys)) < len(keys):
            twice.append(next(k for i, k in enumerate(keys) if k in keys[:i]))
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except ValueError:  # (valid JSON, as pydantic read it: not expected)
        return None
    return twice[0] if twice else None


# The body /v1/predict documents: the handler reads it itself (`_predict_request`).
_PREDICT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": PredictRequest.model_json_schema()}}}}


def _warm_up(source: OnlineFeatures, loaded: LoadedModel | None) -> None:
    """Score one made-up impression before serving (no answer, no metrics): the predict path
    initialises lazily (user-agent and crawler patterns compile on first use, the feature
    source prepares its reads), and the first request paid ~120 ms for it (measured), with
    every request behind it waiting. Failures are left for real requests to report."""
    example = PredictRequest.model_config["json_schema_extra"]["examples"][0]
    with contextlib.suppress(Exception):
        inputs = source.feature_inputs("warm-up", example["campaign_id"], now_ms(),
                                       example["ip"], example["user_agent"], domain=None)
        features = compute_features(inputs)
        decide(0.0, is_crawler=False, activity=UserActivity.from_inputs(inputs), cost=None,
               value_per_click=None, policy=DecisionPolicy())
        if loaded is not None and loaded.backend == "local":
            loaded.predict(loaded.encode_one(features))


def _serve_directly(app: FastAPI, path: str, handler) -> None:
    """Answer the route at `path` with `handler(raw body, content type) -> JSON bytes` as a
    plain ASGI app.

    FastAPI keeps the route (its OpenAPI entry, 405s, the route label of the metrics, the error
    handlers, which see what `handler` raises) but no longer runs its per-request machinery
    for it: a Request object, two exit stacks, a second exception wrapper, dependency solving
    and a Response object, ~40 us of the ~1 ms of server CPU a prediction takes (measured under
    load at 500 requests/s). The route's declared dependency, the bearer check, is made here."""
    route = next(r for r in app.router.routes if isinstance(r, APIRoute) and r.path == path)
    assert [d.call for d in route.dependant.dependencies] == [require_token], (
        "the direct route makes the bearer check only: declare no other dependency")

    async def direct(scope: Scope, receive: Receive, send: Send) -> None:
        authorization, content_type = [], None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization.append(value.decode("latin-1"))
            elif name == b"content-type":
                content_type = value.decode("latin-1")
        authorize(authorization, app.state.token)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                client_gone(scope)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        payload = await handler(b"".join(chunks), content_type)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    route.app = direct


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(source: OnlineFeatures, model: ModelSlot, lookup: LookupTable | None = None,
               config: ServingConfig | None = None, source_kind: str = "online",
               past: Callable[[], OnlineFeatures] | None = None) -> FastAPI:
    """The API over a feature source (`OnlineFeatures`), a model slot and, for `?as_of=`
    profiles, the lake's time-travel lookup table. `past()`: the features for impressions
    older than the source keeps (`BeforeHorizon`): the lake's, exact as of any instant. Loads
    the champion now if none is loaded."""
    config = config or ServingConfig()
    metrics = ApiMetrics()
    lake_lock = threading.Lock()  # `lookup`: time travel reads run in the thread pool
    # Reads off the event loop unless they are local and short: the lake's are Parquet
    # (milliseconds; S3: more), DynamoDB's network round trips (a prediction's segment rows:
    # one while they are kept, 6-14 after a commit); a SQLite key read is shorter than the hop
    # to the thread pool.
    offload = not isinstance(getattr(source, "state", None), SqliteState)

    async def source_read(fn, *args, off_loop: bool = False, **kwargs):
        """fn(*args, **kwargs) in the thread pool when the source's reads leave the event loop
        (`offload`, or `off_loop`: a lake read for this request), inline otherwise."""
        if offload or off_loop:
            return await run_in_threadpool(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    model_info_lock = threading.Lock()  # set by the checks' thread and by requests that follow
    if model.current is None:
        model.refresh()

    def publish_model_info() -> None:
        with model_info_lock:
            m = model.current
            if m is not None:
                metrics.set_model(m.model_id, m.promoted_at, m.backend)

    def publish_model() -> None:
        publish_model_info()
        wm = source.watermark_ms()
        if wm is not None:
            metrics.set_features_as_of(wm / 1000)

    def refresh_all() -> None:
        if model.refresh():
            metrics.model_reloads.inc()
        refresh = getattr(source, "refresh", None)
        if callable(refresh):
            refresh()
        if lookup is not None:
            with lake_lock:
                lookup.snapshot_hours(refresh=True)  # time travel sees hours built since startup
        publish_model()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def follow_champion() -> None:
            while True:
                await asyncio.sleep(config.reload_every_s)
                with contextlib.suppress(Exception):  # a failed check retries next time
                    await asyncio.to_thread(refresh_all)

        task = asyncio.create_task(follow_champion())
        metrics.ready()  # model loaded and warmed up (above, before the app was returned)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="clicklake", version="1",
        description="Click probability and serve/skip decisions for ad impressions, and user "
        "profiles now or as of any past instant. Errors are JSON `{detail, code}`.",
        lifespan=lifespan,
        # A trailing slash answered a 307 to the same path on whatever host the request's Host
        # header named (an open redirect, before the token check): an unknown route is a 404.
        redirect_slashes=False,
        responses={401: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
        docs_url=None,  # served below from the installed Swagger UI files, not from a CDN
    )
    _offline_docs(app)
    app.state.token = config.token
    app.state.model = model
    app.state.source = source
    app.state.metrics = metrics
    app.state.refresh_all = refresh_all
    publish_model()
    _warm_up(source, model.current)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content=jsonable_encoder({
            "detail": _validation_message(errors), "code": "invalid_request", "errors": errors}))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        code = getattr(exc, "code", None) or {401: "unauthorized", 404: "not_found",
                                              405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(status_code=exc.status_code, content={"detail": detail, "code": code},
                            headers=getattr(exc, "headers", None))

    def fail(status: int, detail: str, code: str) -> HTTPException:
        exc = HTTPException(status, detail)
        exc.code = code  # type: ignore[attr-defined]
        return exc

    def unreadable(exc: OSError) -> HTTPException:
        """The lake or store could not be read: the server's side, said as such (a plain-text
        500 before)."""
        return fail(503, f"the feature source cannot be read: {exc}", "features_unavailable")

    def watermark_iso() -> str | None:
        wm = source.watermark_ms()
        return None if wm is None else iso(wm)

    async def lake_watermark_iso() -> str | None:
        """The watermark of the lake's answers (time travel, instants the online store no
        longer keeps): the lake's, not the online store's, which may be hours ahead of it."""
        if past is None:  # a lake server: its source is the lake
            return await source_read(watermark_iso)
        wm = await run_in_threadpool(lambda: past().watermark_ms())
        return None if wm is None else iso(wm)

    async def endpoint_score(loaded: LoadedModel, features: dict) -> float:
        """The endpoint's probability for the features encoded for `loaded`; 503 when it fails.
        `ServedByAnotherModel` passes through: the endpoint serves another model."""
        try:
            return float((await run_in_threadpool(loaded.predict,
                                                  loaded.encode_one(features)))[0])
        except ServedByAnotherModel:
            raise
        except Exception as exc:  # noqa: BLE001 - down, throttled, or answered nonsense
            metrics.model_errors.inc()
            raise fail(503, f"the model endpoint of {loaded.model_id} failed: "
                       f"{type(exc).__name__}: {exc}", "model_unavailable") from None

    async def remote_score(loaded: LoadedModel, features: dict) -> tuple[LoadedModel, float]:
        """The model that scored and its probability. When the endpoint answers from another
        model's variant (a deploy under way or failed), that model is loaded and the features
        encoded with its vocabularies are scored again, once: never a probability computed
        from codes of another vocabulary; 503 `model_switching` when that does not settle."""
        try:
            return loaded, await endpoint_score(loaded, features)
        except ServedByAnotherModel as exc:
            followed = await follow_endpoint(exc.invoked_variant)
        try:
            return followed, await endpoint_score(followed, features)
        except ServedByAnotherModel as exc:  # switched again meanwhile: the caller may retry
            metrics.model_errors.inc()
            raise fail(503, f"the model endpoint is switching models: {exc}",
                       "model_switching") from None

    async def follow_endpoint(variant: str) -> LoadedModel:
        """The model the endpoint serves, loaded in the slot (registry reads: off the loop)."""
        try:
            followed = await run_in_threadpool(model.follow, variant)
        except Exception as exc:  # noqa: BLE001 - not in the registry, or unreadable
            metrics.model_errors.inc()
            raise fail(503, "the model endpoint answers from another model, which cannot be "
                       f"loaded: {type(exc).__name__}: {exc}", "model_switching") from None
        publish_model_info()
        return followed

    async def score(raw: bytes, content_type: str | None) -> bytes:
        """POST /v1/predict's work: the raw request body -> the JSON answer. Errors raise
        (HTTPException, RequestValidationError) and are answered by the handlers above."""
        start = time.perf_counter()
        body = _predict_request(raw, content_type)
        loaded = model.current  # one read: a concurrent swap cannot mix two models
        if loaded is None:
            raise fail(503, "no model is deployed yet (materialize deployed_model)", "no_model")
        ts = body.ts_ms()
        features_as_of = watermark_iso  # the source's, unless the lake answered for it
        try:
            try:
                inputs = await source_read(source.feature_inputs, body.user_id,
                                           body.campaign_id, ts, body.ip, body.user_agent,
                                           domain=body.domain)
            except (BeforeHorizon, Rebuilding):
                if past is None:
                    raise
                # Older than the online store keeps, or a store being rebuilt (it holds part
                # of the history): the lake's time travel (Parquet reads: off the event loop).
                inputs = await run_in_threadpool(
                    lambda: past().feature_inputs(body.user_id, body.campaign_id, ts, body.ip,
                                                  body.user_agent, domain=body.domain))
                lake_as_of = await lake_watermark_iso()  # the lake's events, not the store's
                features_as_of = lambda: lake_as_of
        except NoSnapshots as exc:  # the lake's fault, not the request's
            raise fail(503, f"the feature source cannot answer: {exc}", "features_unavailable"
                       ) from None
        except (SnapshotUnavailable, BeforeHorizon) as exc:  # too old for this source
            raise fail(422, f"no features for ts {iso(ts)}: {exc}", "features_unavailable"
                       ) from None
        except StaleLayout as exc:  # a newer clicklake writes the online store now
            raise fail(503, str(exc), "stale_layout") from None
        except LookupError as exc:
            raise fail(503, f"the feature source cannot answer: {exc}", "features_unavailable"
                       ) from None
        except OSError as exc:  # the lake or store unreadable (an S3 endpoint unreachable)
            raise unreadable(exc) from None
        features = compute_features(inputs)
        if loaded.backend == "local":
            probability = float(loaded.predict(loaded.encode_one(features))[0])
        else:
            loaded, probability = await remote_score(loaded, features)
        verdict = decide(probability, is_crawler=bool(np.asarray(inputs["is_crawler"])[0]),
                         activity=UserActivity.from_inputs(inputs), cost=body.cost,
                         value_per_click=body.value_per_click, policy=config.policy)
        metrics.decisions.labels(verdict.decision).inc()
        for r in verdict.reasons:
            metrics.reasons.labels(r.code).inc()
        metrics.probability.observe(probability)
        # Serialized here rather than re-validated against the response model by FastAPI: the
        # shape is PredictResponse (the docs say so), built from typed values.
        return orjson.dumps({
            "impression_id": body.impression_id, "probability": probability,
            "decision": verdict.decision,
            "reasons": [{"code": r.code, "message": r.message} for r in verdict.reasons],
            "expected_value": verdict.expected_value, "value_per_click": verdict.value_per_click,
            "cost": body.cost, "model": {"id": loaded.model_id,
                                         "promoted_at": loaded.promoted_at,
                                         "backend": loaded.backend},
            "ts": iso(ts), "features_as_of": await source_read(features_as_of),
            "latency_ms": round((time.perf_counter() - start) * 1000, 3)})

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=[Depends(require_token)],
              responses={503: {"model": ErrorOut}}, summary="Score an impression",
              openapi_extra=_PREDICT_BODY)
    async def predict(request: Request) -> Response:
        """Click probability of the impression with features as of just before `ts`, and the
        serve/skip decision with every reason that fired (crawler user agent, click-farm
        behaviour, expected value below cost)."""
        return Response(await score(await request.body(), request.headers.get("content-type")),
                        media_type="application/json")

    # The declaration above is the route's contract (docs, methods, auth); requests take this:
    _serve_directly(app, "/v1/predict", score)

    # exclude_unset: the lists are left out, not null, when they were not asked for
    @app.get("/v1/users/{user_id}/profile", response_model=ProfileOut,
             response_model_exclude_unset=True,
             dependencies=[Depends(require_token)],
             responses={404: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             summary="A user's profile now or as of an instant")
    async def profile(
        user_id: Annotated[str, Path(min_length=1, max_length=128)],
        as_of: Annotated[str | None, Query(
            max_length=40, description="ISO-8601 (naive = UTC) or epoch ms; default now. "
            "A past instant is answered by the lake's time-travel lookup table.")] = None,
        lists: Annotated[bool, Query(
            description="Include the per-campaign counts and the domains. false = the "
            "counters alone: a week-long user's lists are most of the work of a read.")] = True,
    ) -> ProfileOut | Response:
        """Counters over the user's events with ts < the instant: lifetime and 1 h / 24 h / 7 d
        windows, recency, distinct campaigns and domains, and (unless `lists=false`) the
        per-campaign counts and the domains themselves."""
        if has_control_characters(user_id):
            raise fail(422, "user_id: control characters (or invisible ones) are not allowed",
                       "invalid_request")
        as_text = as_of is None and isinstance(source, OnlineStoreFeatures)
        if as_of is None:
            t, kind = now_ms(), "online" if source_kind == "online" else "lake"
            if kind == "lake" and (wm := source.watermark_ms()) is not None:
                t = min(t, wm)  # the lake answers as of its watermark: the windows end there

            def reader(u: str, at: int) -> dict | None:
                if as_text:  # the lists as the store keeps them, JSON (`OnlineFeatures.profile`)
                    return source.profile(u, at, lists=lists, encoded=True)
                return source.profile(u, at, lists=lists)
        else:
            try:
                t = parse_ts(as_of)
            except ValueError as exc:
                hint = (" (a '+' in a URL reads as a space: encode it as %2B)"
                        if " " in as_of else "")
                raise fail(422, f"as_of: {exc}{hint}", "invalid_request") from None
            if lookup is None:
                raise fail(501, "time travel needs the lake (start the server with a lake root)",
                           "no_lake")
            kind = "lake"

            def reader(u: str, at: int) -> dict | None:
                with lake_lock:  # the lookup table's caches are not thread-safe
                    row = lookup.profile(u, at)
                    start = lookup.history_start() if row["before_history"] else None
                if start is not None:
                    raise fail(404, f"no history as of {iso(at)}: the lake's history starts at "
                               f"{iso(start)}", "before_history")
                return row if row["known"] else None
        try:
            # time travel reads the lake
            row = await source_read(reader, user_id, t, off_loop=as_of is not None)
        except (NoSnapshots, Rebuilding, TornRead) as exc:
            raise fail(503, str(exc), "features_unavailable") from None
        except OSError as exc:
            raise unreadable(exc) from None
        except (SnapshotUnavailable, BeforeHorizon) as exc:
            raise fail(404, str(exc), "snapshot_unavailable") from None
        except StaleLayout as exc:
            raise fail(503, str(exc), "stale_layout") from None
        if row is None or not row.get("known", True):  # no impression or click before t
            raise fail(404, f"user {user_id!r} has no events before {iso(t)}", "unknown_user")
        hidden = {"t", "known", "user_id", "before_history", "snapshot_as_of"}
        if not lists:
            hidden |= {"campaigns", "domains"}
        out = {k: _plain(k, v) for k, v in row.items() if k not in hidden}
        try:
            features_as_of = (await source_read(watermark_iso) if kind == "online"
                              else await lake_watermark_iso())
        except OSError as exc:
            raise unreadable(exc) from None
        head = {"user_id": user_id, "as_of": iso(t), "features_as_of": features_as_of,
                "source": kind}
        if as_text:
            # ProfileOut's fields, written by orjson with the lists' JSON as it is: validating
            # a week-long user's 170 campaigns would cost more than the read
            return Response(orjson.dumps({**head, **out}), media_type="application/json")
        return ProfileOut(**head, **out)

    # HEAD answers as GET but stays out of the OpenAPI document: one route of both methods gave
    # them the same operationId, which client generators and validators refuse.
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}},
             summary="Liveness and readiness")
    async def healthz() -> JSONResponse:
        """200 when a model is loaded and the feature source can be read, 503 otherwise (no
        token needed: for load balancers and orchestrators, which then restart the server)."""
        m = model.current
        (unreadable, rebuilding), as_of = await source_read(health_reads)
        notice = None
        if rebuilding and past is not None:
            lake_wm = await run_in_threadpool(lambda: past().watermark_ms())
            if lake_wm is not None:  # predictions go on from the lake meanwhile: ready
                notice = f"{unreadable}: predictions use the lake's features"
                unreadable, as_of = None, iso(lake_wm)
        ok = m is not None and unreadable is None
        body = HealthOut(status="ok" if ok else "unavailable",
                         model=_model_out(m) if m else None, source=source_kind,
                         features_as_of=as_of, model_error=model.last_error,
                         source_error=unreadable, source_notice=notice)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    def health_reads() -> tuple[tuple[str | None, bool], str | None]:
        return source_error(), watermark_iso()

    def source_error() -> tuple[str | None, bool]:
        """Why the feature source cannot answer (None when it can): an online store a newer
        clicklake has written since the server started (`OnlineFeatures.check_layout`), one
        being rebuilt (then True: the lake may answer instead), a lake without profiles yet."""
        try:
            source.check_layout()
        except StaleLayout as exc:
            return str(exc), False
        except Rebuilding as exc:
            return f"rebuilding: {exc}", True
        if source_kind == "lake" and source.watermark_ms() is None:
            return ("the lake has no user profile snapshot and segment profile of a common hour "
                    "yet: materialize user_profiles and segment_profiles"), False
        return None, False

    @app.get("/metrics", dependencies=[Depends(require_token)], response_class=Response,
             summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    # Outermost last: metrics see every response, including the body cap's 413.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def lake_app(store, lake_prefix: str = "lake", config: ServingConfig | None = None,
             source: OnlineFeatures | None = None, model: ModelSlot | None = None) -> FastAPI:
    """The app over a lake: `LakeFeatures` unless another source is given."""
    source_kind = "online" if source is not None else "lake"
    # the online store: impressions older than its horizon are scored with the lake's features
    past = LazyLakeFeatures(store, lake_prefix) if source is not None else None
    source = source or LakeFeatures(store, lake_prefix)
    # Its own lookup table: the source's is guarded by the source's lock and replaced on refresh.
    return create_app(source, model or ModelSlot(store, lake_prefix),
                      LookupTable(store, lake_prefix), config, source_kind, past)
