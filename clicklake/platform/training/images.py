"""Where SageMaker's built-in XGBoost image lives: one ECR account per region.

The accounts are those of AWS's `sagemaker-xgboost` repository for the 1.0-1 and later images (the
same map `sagemaker.core.image_uris` ships); a region not listed needs an explicit image URI.
"""

from __future__ import annotations

import re

MIN_VERSION = "3.0-5"  # first image whose artifacts XGBoost 3.x reads without a pickle shim

ACCOUNTS: dict[str, str] = {
    "af-south-1": "510948584623",
    "ap-east-1": "651117190479",
    "ap-northeast-1": "354813040037",
    "ap-northeast-2": "366743142698",
    "ap-northeast-3": "867004704886",
    "ap-south-1": "720646828776",
    "ap-south-2": "628508329040",
    "ap-southeast-1": "121021644041",
    "ap-southeast-2": "783357654285",
    "ap-southeast-3": "951798379941",
    "ap-southeast-4": "106583098589",
    "ca-central-1": "341280168497",
    "ca-west-1": "190319476487",
    "cn-north-1": "450853457545",
    "cn-northwest-1": "451049120500",
    "eu-central-1": "492215442770",
    "eu-central-2": "680994064768",
    "eu-north-1": "662702820516",
    "eu-south-1": "978288397137",
    "eu-south-2": "104374241257",
    "eu-west-1": "141502667606",
    "eu-west-2": "764974769150",
    "eu-west-3": "659782779980",
    "il-central-1": "898809789911",
    "me-central-1": "272398656194",
    "me-south-1": "801668240914",
    "sa-east-1": "737474898029",
    "us-east-1": "683313688378",
    "us-east-2": "257758044811",
    "us-gov-east-1": "237065988967",
    "us-gov-west-1": "414596584902",
    "us-west-1": "746614075791",
    "us-west-2": "246618743249",
}

_VERSION = re.compile(r"^(\d+)\.(\d+)-(\d+)$")


def _version_key(version: str) -> tuple[int, int, int]:
    m = _VERSION.match(version)
    if not m:
        raise ValueError(f"XGBoost image version must look like '3.0-5', got {version!r}")
    return int(m[1]), int(m[2]), int(m[3])


def xgboost_image_uri(region: str, version: str = MIN_VERSION) -> str:
    """ECR URI of the built-in XGBoost image for `region` (version 3.0-5 or newer)."""
    if _version_key(version) < _version_key(MIN_VERSION):
        raise ValueError(
            f"XGBoost image {version} is older than {MIN_VERSION}: local XGBoost 3.x "
            "cannot be relied on to read its artifacts"
        )
    account = ACCOUNTS.get(region)
    if account is None:
        raise ValueError(f"no known XGBoost image account for region {region!r}: set image_uri")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/sagemaker-xgboost:{version}"
