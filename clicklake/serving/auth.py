"""Bearer-token authentication: required on the API's routes when a token is configured."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# auto_error=False: a missing header is answered by `require_token` below, with our message.
bearer = HTTPBearer(auto_error=False, description="The token configured on the server "
                    "(`CLICKLAKE_API_TOKEN` or `clicklake serve --token`).")


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
