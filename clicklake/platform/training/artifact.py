"""The model artifact: `model.tar.gz` holding exactly one file, `xgboost-model`.

This is what SageMaker's built-in XGBoost writes to `<output>/<job>/output/model.tar.gz` and what
its endpoints load; the in-process trainer writes the same thing, so either model can be served
by either backend. The booster is stored as UBJSON (XGBoost's default binary model format, read
back by `Booster.load_model` of any 2.x/3.x build). The tar is deterministic (fixed mtime, owner and
mode), so the same booster always packs to the same bytes.
"""

from __future__ import annotations

import gzip
import io
import tarfile

import xgboost as xgb

MEMBER = "xgboost-model"
ARTIFACT_NAME = "model.tar.gz"


def pack_model(model: xgb.Booster | bytes) -> bytes:
    """A booster (or its raw saved bytes) -> model.tar.gz bytes."""
    raw = bytes(model.save_raw(raw_format="ubj")) if isinstance(model, xgb.Booster) else model
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MEMBER)
        info.size = len(raw)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(raw))
    # gzip with mtime=0 so identical models give identical artifacts (and digests).
    return gzip.compress(tar_buf.getvalue(), compresslevel=6, mtime=0)


def unpack_model(artifact: bytes) -> bytes:
    """model.tar.gz bytes -> the raw `xgboost-model` bytes; refuses any other layout."""
    with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:gz") as tar:
        members = tar.getmembers()
        names = [m.name.removeprefix("./") for m in members]
        if names != [MEMBER] or not members[0].isfile():
            raise ValueError(f"model.tar.gz must hold exactly one file {MEMBER!r}, found {names}")
        f = tar.extractfile(members[0])
        assert f is not None
        return f.read()


def load_booster(artifact: bytes) -> xgb.Booster:
    """model.tar.gz bytes -> a ready booster (JSON or UBJSON model inside)."""
    booster = xgb.Booster()
    booster.load_model(bytearray(unpack_model(artifact)))
    return booster
