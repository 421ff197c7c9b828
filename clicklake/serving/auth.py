"""Bearer-token authentication: required on the API's routes when a token is configured."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status
from fastapi.security import HTTPBearer


def check_token(token: str | None) -> str | None:
    """The token to configure, or ValueError: visible ASCII, no spaces. Starlette reads header
    bytes as Latin-1 and a request's token is stripped, so a token with other characters or
    with surrounding whitespace (a secret file's final newline) could never match: the server
    started, said a token was required, and refused everyone."""
    if not token:
        return None
    bad = sorted({repr(c) for c in token if not "!" <= c <= "~"})
    if bad:
        raise ValueError(f"the API token may hold visible ASCII characters only, not "
                         f"{', '.join(bad[:5])} (a trailing newline from a secret file?)")
    return token


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak how much of a guess matched."""
    return hmac.compare_digest(given.encode(), expected.encode())


def authorize(authorization: list[str], expected: str | None) -> None:
    """Raise a 401 unless the request's one Authorization header (`authorization`: every one
    it has) carries the expected bearer token (any request passes when no token is
    configured). Several headers are refused: which one counts would depend on the route."""
    if not expected:
        return
    if len(authorization) > 1:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "more than one Authorization header: send exactly one",
                            headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = (authorization[0] if authorization else "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    if not token_matches(token, expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class BearerToken(HTTPBearer):
    """`HTTPBearer` (the docs show the scheme) that also checks the token against the app's
    (`app.state.token`; None = open): one dependency per request instead of a checker over a
    credentials dependency, which FastAPI resolves at a cost of tens of microseconds each."""

    def __init__(self) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer", description=(
            "The token configured on the server (`CLICKLAKE_API_TOKEN` or "
            "`clicklake serve --token`)."))

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        authorize(request.headers.getlist("authorization"), request.app.state.token)


require_token = BearerToken()
