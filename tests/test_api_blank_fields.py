"""A blank optional field of a predict request is absent, as the raw layer stores one (null):
the request's features then equal the labeled row of the same impression. A blank id is
refused, as raw refuses a blank required id (missing_field)."""

from __future__ import annotations

import feature_oracle as fo
import pytest
from pydantic import ValidationError

from clicklake.platform.labeled import lake_feature_inputs
from clicklake.platform.raw import read_raw
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, parse_instant
from clicklake.serving import LakeFeatures
from clicklake.serving.schemas import PredictRequest

H = parse_instant("2026-11-22T22:00:00Z")


def _imp(i: int, ts: int, domain: str | None) -> tuple[str, dict, int]:
    return "impressions", {"impression_id": f"i{i}", "ts": ts, "user_id": "u1",
                           "campaign_id": "c1", "domain": domain, "ip": "8.8.8.8",
                           "user_agent": " ", "cost": 0.5}, ts


def test_a_blank_domain_counts_as_the_lake_counts_it(tmp_path):
    """The lake counts impressions with a blank domain under the "unknown" domain segment; a
    request with domain "  " looked up segment "  " (always empty): 0 against 2."""
    store = Store(str(tmp_path))
    fo.land(store, [_imp(0, H + 60_000, None), _imp(1, H + 120_000, "  "),
                    _imp(2, H + HOUR_MS + 60_000, "\t")])
    fo.build_lake(store, [H + k * HOUR_MS for k in range(3)])
    raw = read_raw(store, "impressions", H + HOUR_MS)
    assert raw["domain"].to_pylist() == [None] and raw["user_agent"].to_pylist() == [None]
    batch = lake_feature_inputs(store, raw, whole_raw_hour=True)
    body = PredictRequest.model_validate({"user_id": "u1", "campaign_id": "c1",
                                          "ts": H + HOUR_MS + 60_000, "domain": "  ",
                                          "ip": "8.8.8.8", "user_agent": "\t"})
    assert body.domain is None and body.user_agent is None
    served = LakeFeatures(store).feature_inputs("u1", "c1", body.ts_ms(), body.ip,
                                                body.user_agent, body.domain)
    assert batch["domain_impressions_24h"][0] == 2
    for name in batch:  # NaN where both are missing
        assert str(list(served[name])) == str(list(batch[name])), name


@pytest.mark.parametrize("field", ["impression_id", "domain", "ip", "user_agent"])
@pytest.mark.parametrize("blank", ["", " ", "\t \u3000"])
def test_blank_optional_fields_are_absent(field, blank):
    body = PredictRequest.model_validate({"user_id": "u", "campaign_id": "c", field: blank})
    assert getattr(body, field) is None


@pytest.mark.parametrize("field", ["user_id", "campaign_id"])
def test_blank_ids_are_refused(field):
    base = {"user_id": "u", "campaign_id": "c"}
    with pytest.raises(ValidationError, match=field):
        PredictRequest.model_validate({**base, field: "  "})


def test_lake_source_now_answers_each_domain_its_own_segment_counts(tmp_path):
    """Requests at "now" are memoised by what they ask: a second domain gets its own domain
    counts, not the first one's."""
    minute = 60_000
    deliveries = [("impressions", {"impression_id": i, "ts": H + k * minute, "user_id": f"u{i}",
                                   "campaign_id": "c1", "domain": d}, H + k * minute)
                  for k, (i, d) in enumerate([("a", "a.com"), ("b", "a.com"), ("c", "b.org")], 1)]
    store = Store(str(tmp_path))
    fo.land(store, deliveries)
    fo.build_lake(store, [H + k * HOUR_MS for k in range(2)])
    source = LakeFeatures(store)
    now = source.watermark_ms() + 10 * minute  # answered as of the watermark
    got = [source.feature_inputs("ux", "c1", now, None, None, domain=d)[
        "domain_impressions_24h"][0] for d in ("a.com", "b.org", "a.com")]
    assert got == [2.0, 1.0, 2.0]
