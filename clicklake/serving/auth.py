"""Bearer-token authentication: required on the API's routes when a token is configured."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak how much of a guess matched."""
    return hmac.compare_digest(given.encode(), expected.encode())


def check_bearer(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    expected: str | None = request.app.state.token
    if not expected:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a bearer token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    if not token_matches(credentials.credentials, expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class BearerToken(HTTPBearer):
    """`HTTPBearer` (the docs show the scheme) that also checks the token against the app's
    (`app.state.token`; None = open): one dependency per request instead of a checker over a
    credentials dependency, which FastAPI resolves at a cost of tens of microseconds each."""

    def __init__(self) -> None:
        # auto_error=False: a missing header is answered by `check_bearer`, with our message.
        super().__init__(auto_error=False, scheme_name="HTTPBearer", description=(
            "The token configured on the server (`CLICKLAKE_API_TOKEN` or "
            "`clicklake serve --token`)."))

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        if request.app.state.token:
            check_bearer(request, await super().__call__(request))


require_token = BearerToken()
