"""The lake and landing zone as one Dagster resource: a local folder by default, S3 in production."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from clicklake.platform.storage import S3Options, Store

DEFAULT_ROOT = "data"


class LakeResource(dg.ConfigurableResource):
    """Where landing files arrive and where the lake lives.

    `root` is a local folder or `s3://bucket/prefix`; below it, `landing/` holds what Firehose
    delivers and `lake/` what clicklake writes (raw/, quarantine/, tiles/, ...). When `root` is not
    set, the `CLICKLAKE_ROOT` environment variable is used (read when the resource is used, not at
    import), then `data/`.
    """

    root: str | None = Field(default=None, description="Local folder or s3://bucket/prefix.")
    landing_prefix: str = Field(default="landing", description="Prefix Firehose delivers into.")
    lake_prefix: str = Field(default="lake", description="Prefix of the lake below the root.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint override (a local S3-compatible server in tests)."
    )
    region: str | None = Field(default=None, description="AWS region of the bucket.")

    def resolved_root(self) -> str:
        return self.root or os.environ.get("CLICKLAKE_ROOT") or DEFAULT_ROOT

    def store(self) -> Store:
        endpoint = self.s3_endpoint_url or os.environ.get("CLICKLAKE_S3_ENDPOINT_URL")
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return Store(self.resolved_root(), S3Options(endpoint_url=endpoint, region=region))
