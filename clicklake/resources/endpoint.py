"""Model serving: the champion's booster in this process, or a SageMaker endpoint.

`deploy(store, model_id)` puts a registered model behind the server; `predict(rows)` scores rows
of features (in manifest order, NaN = missing) and returns click probabilities.
"""

from __future__ import annotations

import hashlib
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

from clicklake.platform.storage import Store
from clicklake.platform.training import registry
from clicklake.platform.training.artifact import load_booster
from clicklake.platform.training.csvformat import CONTENT_TYPE, features_to_csv
from clicklake.platform.training.images import MIN_VERSION, xgboost_image_uri
from clicklake.platform.training.local import predict as booster_predict


@dataclass(frozen=True)
class Deployment:
    model_id: str
    target: str  # "local" or the endpoint name
    details: dict


class ModelEndpointResource(dg.ConfigurableResource, ABC):
    @abstractmethod
    def deploy(self, store: Store, model_id: str, prefix: str = "lake") -> Deployment: ...

    @abstractmethod
    def predict(self, rows: np.ndarray) -> np.ndarray: ...


class LocalModelServer(ModelEndpointResource):
    """Scores with an in-process booster: the deployed model, else the registry's champion."""

    _booster = PrivateAttr(default=None)
    _model_id = PrivateAttr(default=None)

    def deploy(self, store: Store, model_id: str, prefix: str = "lake") -> Deployment:
        self._booster = load_booster(registry.artifact_of(store, model_id, prefix))
        self._model_id = model_id
        return Deployment(
            model_id, "local", {"artifact_key": registry.artifact_key(model_id, prefix)}
        )

    def load_champion(self, store: Store, prefix: str = "lake") -> str | None:
        """Load the current champion; returns its id, or None when nothing was promoted yet."""
        champ = registry.champion(store, prefix)
        if champ is None:
            return None
        self.deploy(store, champ.model_id, prefix)
        return champ.model_id

    @property
    def model_id(self) -> str | None:
        return self._model_id

    def predict(self, rows: np.ndarray) -> np.ndarray:
        if self._booster is None:
            raise RuntimeError("no model loaded: deploy() or load_champion() first")
        return booster_predict(self._booster, rows)


def _name(*parts: str, extra: tuple[str, ...] = ()) -> str:
    """A SageMaker resource name: [a-zA-Z0-9-], at most 63 characters, distinct for distinct
    parts: a hash of them and of `extra` (what the resource holds, not spelled in its name) ends
    it (cleaning and cutting alone gave `m.1` and `m_1`, or two long model ids behind a long
    endpoint name, one name, and a deploy replaced another's model)."""
    digest = hashlib.blake2b("\x1f".join((*parts, *extra)).encode(), digest_size=4).hexdigest()
    name = re.sub(r"[^a-zA-Z0-9-]+", "-", "-".join(parts)).strip("-")
    return f"{name[:63 - len(digest) - 1].rstrip('-')}-{digest}"


_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack")  # endpoint states to wait out


def _described(describe, **name: str) -> dict | None:
    """What `describe` answers for the SageMaker resource it names, None when there is none."""
    from botocore.exceptions import ClientError

    try:
        return describe(**name)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
            return None  # SageMaker's "Could not find ..."
        raise


def parse_csv_scores(body: bytes) -> np.ndarray:
    """The built-in XGBoost endpoint answers text/csv with scores separated by commas or newlines."""
    text = body.decode().strip()
    if not text:
        return np.empty(0)
    return np.array([float(t) for t in re.split(r"[,\n]+", text) if t.strip()])


def variant_name(model_id: str) -> str:
    """The production variant a model is deployed as: an endpoint's answer names the variant
    that computed it, and so the model, whose vocabularies the rows must be encoded with."""
    return _name("model", model_id)


# The one variant of every deploy before variants were named for their model.
UNNAMED_VARIANT = "AllTraffic"


class EndpointDeployFailed(RuntimeError):
    """The endpoint did not come to serve the config a deploy asked for (SageMaker's reason
    in the message): the model must not be promoted."""


class ServedByAnotherModel(Exception):
    """The endpoint answered from another model's variant than the one the rows were encoded
    for (a deploy under way or failed): its scores are not for these rows, and are dropped."""

    def __init__(self, invoked_variant: str, expected_variant: str):
        super().__init__(f"the endpoint answered from variant {invoked_variant!r}, not "
                         f"{expected_variant!r} (the model the row was encoded for)")
        self.invoked_variant = invoked_variant


def invoke_scores(client, endpoint_name: str, rows: np.ndarray,
                  variant: str | None = None) -> np.ndarray:
    """The endpoint's probability for each of `rows` (a sagemaker-runtime client); ValueError
    naming what it answered when that is not one probability in [0, 1] per row. `variant`: the
    variant the rows were encoded for; an answer from another one raises `ServedByAnotherModel`
    (an answer from `UNNAMED_VARIANT`, or naming none, is taken as before: it cannot be checked)."""
    answer = client.invoke_endpoint(EndpointName=endpoint_name, ContentType=CONTENT_TYPE,
                                    Accept=CONTENT_TYPE, Body=features_to_csv(rows))
    body = answer["Body"].read()  # first: an unread answer keeps its connection from the pool
    invoked = answer.get("InvokedProductionVariant")
    # An endpoint deployed before variants were named for their model answers from
    # UNNAMED_VARIANT (a test double may name none): taken as before, as it cannot be checked.
    if variant is not None and invoked not in (None, UNNAMED_VARIANT, variant):
        raise ServedByAnotherModel(invoked, variant)
    try:
        scores = parse_csv_scores(body)
    except (UnicodeDecodeError, ValueError):
        scores = None
    if scores is None or len(scores) != len(rows) or not (
            np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()):
        raise ValueError(f"the endpoint answered {body[:80]!r} for {len(rows)} row(s): "
                         "expected as many probabilities")
    return scores


class SageMakerEndpoint(ModelEndpointResource):
    """A real-time SageMaker endpoint serving the built-in XGBoost image."""

    role_arn: str = Field(description="IAM role the model runs as (reads model.tar.gz from S3).")
    endpoint_name: str = Field(default="clicklake-ctr")
    instance_type: str = Field(default="ml.m5.large")
    instance_count: int = Field(default=1)
    region: str | None = Field(default=None)
    image_uri: str | None = Field(default=None, description="Override of the XGBoost image URI.")
    xgboost_version: str = Field(default=MIN_VERSION)
    endpoint_url: str | None = Field(default=None, description="AWS endpoint override (tests).")
    poll_delay_s: int = Field(default=30)
    max_wait_attempts: int = Field(default=120)

    def resolved_region(self) -> str:
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            raise ValueError("no AWS region: set `region` or AWS_REGION")
        return region

    def _client(self, service: str, config=None):
        import boto3

        return boto3.client(
            service, region_name=self.resolved_region(), endpoint_url=self.endpoint_url,
            config=config,
        )

    def deploy(self, store: Store, model_id: str, prefix: str = "lake") -> Deployment:
        """Model + endpoint config named for the model; create the endpoint or switch it over."""
        if not store.is_s3:
            raise ValueError("a SageMaker endpoint needs the model in S3: use an s3:// lake root")
        model_data_url = store.uri(registry.artifact_key(model_id, prefix))
        if not store.exists(registry.artifact_key(model_id, prefix)):
            raise KeyError(f"model {model_id!r} is not registered")
        return self.deploy_artifact(model_data_url, model_id)

    def deploy_artifact(self, model_data_url: str, model_id: str) -> Deployment:
        """Idempotent: SageMaker refuses to create a model or endpoint config under a name that
        exists and never changes one, so each name hashes what its resource holds, and one that
        exists is used as it is. A redeploy of the same model (a rerun after the wait timed out,
        a rollback to an earlier champion) then reuses its own resources, and switches the
        endpoint only when it serves another config."""
        sm = self._client("sagemaker")
        image = self.image_uri or xgboost_image_uri(self.resolved_region(), self.xgboost_version)
        model_name = _name(self.endpoint_name, model_id, extra=(image, model_data_url))
        variant = variant_name(model_id)
        # The variant is in the hash: a config of an older deploy (variant "AllTraffic") is
        # not reused, so the endpoint's answers name the model from this deploy on.
        config_name = _name(self.endpoint_name, model_id, extra=(
            model_name, self.instance_type, str(self.instance_count), variant))
        reused = _described(sm.describe_model, ModelName=model_name) is not None
        if not reused:
            sm.create_model(
                ModelName=model_name,
                PrimaryContainer={"Image": image, "ModelDataUrl": model_data_url},
                ExecutionRoleArn=self.role_arn,
            )
        if _described(sm.describe_endpoint_config, EndpointConfigName=config_name) is None:
            sm.create_endpoint_config(
                EndpointConfigName=config_name,
                ProductionVariants=[
                    {
                        "VariantName": variant,
                        "ModelName": model_name,
                        "InitialInstanceCount": self.instance_count,
                        "InstanceType": self.instance_type,
                        "InitialVariantWeight": 1.0,
                    }
                ],
            )
        endpoint = _described(sm.describe_endpoint, EndpointName=self.endpoint_name)
        if endpoint is not None and endpoint.get("EndpointStatus") in _BUSY:
            # An update under way (a rerun after a wait that timed out): SageMaker refuses
            # another until it ends, and the config it ends on is the one to compare with.
            endpoint = self._wait(sm, failed_ok=True)
        replaced = endpoint is not None and endpoint.get("EndpointStatus") == "Failed"
        if replaced:
            # DeleteEndpoint is the only call SageMaker takes on a failed endpoint: without
            # this every later deploy failed until someone deleted it by hand.
            sm.delete_endpoint(EndpointName=self.endpoint_name)
            sm.get_waiter("endpoint_deleted").wait(
                EndpointName=self.endpoint_name,
                WaiterConfig={"Delay": self.poll_delay_s, "MaxAttempts": self.max_wait_attempts})
            endpoint = None
        current = None if endpoint is None else endpoint["EndpointConfigName"]
        if current is None:
            sm.create_endpoint(EndpointName=self.endpoint_name, EndpointConfigName=config_name)
        elif current != config_name:
            # An update swaps the config behind the endpoint without downtime.
            sm.update_endpoint(EndpointName=self.endpoint_name, EndpointConfigName=config_name)
        # else: it serves this config already: wait only
        served = self._wait(sm)
        if served["EndpointConfigName"] != config_name:
            # A failed update rolls back: InService again, on the old config, with a reason.
            raise EndpointDeployFailed(
                f"endpoint {self.endpoint_name} still serves {served['EndpointConfigName']}, "
                f"not {config_name} (model {model_id}): "
                f"{served.get('FailureReason') or 'the update was rolled back'}")
        return Deployment(
            model_id,
            self.endpoint_name,
            {
                "model_name": model_name,
                "endpoint_config_name": config_name,
                "model_data_url": model_data_url,
                "image": image,
                "updated": current is not None and current != config_name,
                "reused": reused,
                "replaced_failed_endpoint": replaced,
            },
        )

    def _wait(self, sm, failed_ok: bool = False) -> dict:
        """The endpoint's description once in service (`Failed` too when `failed_ok`); else
        EndpointDeployFailed with SageMaker's reason, not the waiter's bare message."""
        from botocore.exceptions import WaiterError

        try:
            sm.get_waiter("endpoint_in_service").wait(
                EndpointName=self.endpoint_name,
                WaiterConfig={"Delay": self.poll_delay_s, "MaxAttempts": self.max_wait_attempts},
            )
        except WaiterError as exc:
            endpoint = _described(sm.describe_endpoint, EndpointName=self.endpoint_name)
            status = "gone" if endpoint is None else endpoint.get("EndpointStatus")
            if failed_ok and status == "Failed":
                return endpoint
            reason = (endpoint or {}).get("FailureReason") or str(exc)
            raise EndpointDeployFailed(f"endpoint {self.endpoint_name} is {status}, not "
                                       f"InService: {reason}") from exc
        return sm.describe_endpoint(EndpointName=self.endpoint_name)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return invoke_scores(self._client("sagemaker-runtime"), self.endpoint_name, rows)
