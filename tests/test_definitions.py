"""The Definitions load and the asset graph is what DESIGN §1 draws (so far)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from clicklake.definitions import defs


@pytest.fixture(scope="module")
def graph():
    return defs.resolve_asset_graph()


def test_raw_assets_are_hourly_partitioned_with_blocking_checks(graph):
    for stream in ("impressions", "clicks", "predictions"):
        key = dg.AssetKey(f"raw_{stream}")
        node = graph.get(key)
        assert isinstance(node.partitions_def, dg.HourlyPartitionsDefinition)
        checks = {c.name for c in graph.get_check_keys_for_assets({key})}
        assert {"ids_present_and_unique", "ts_in_partition"} <= checks
        for check_key in graph.get_check_keys_for_assets({key}):
            assert graph.get_check_spec(check_key).blocking
    checks = {c.name for c in graph.get_check_keys_for_assets({dg.AssetKey("raw_impressions")})}
    assert "cost_non_negative" in checks
    checks = {c.name for c in graph.get_check_keys_for_assets({dg.AssetKey("raw_predictions")})}
    assert "score_in_unit_interval" in checks


def test_every_definition_validates():
    dg.Definitions.validate_loadable(defs)


def test_hourly_schedule_targets_the_hour_whose_window_closed():
    schedule = defs.resolve_schedule_def("raw_hourly_schedule")
    when = datetime(2026, 11, 25, 15, 15, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
        )
        requests = list(schedule.evaluate_tick(ctx).run_requests)
    assert [r.partition_key for r in requests] == ["2026-11-25-13:00"]
    assert requests[0].run_key == "2026-11-25-13:00"


def test_the_graph_is_the_design_flow(graph):
    """Every box of DESIGN §1, with the lineage the picture draws."""
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "raw_impressions", "raw_clicks", "raw_predictions", "user_hour_tiles", "user_profiles",
        "segment_profiles", "labeled_impressions", "prediction_outcomes", "training_set",
        "click_model", "deployed_model", "serving_lookup"}

    def parents(name):
        return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}

    assert {"raw_impressions", "raw_clicks"} <= parents("user_hour_tiles")
    assert {"user_hour_tiles", "user_profiles"} <= parents("user_profiles")  # the snapshot chain
    assert {"raw_impressions", "raw_clicks", "raw_predictions", "user_profiles",
            "segment_profiles"} <= parents("labeled_impressions")
    assert parents("training_set") == {"labeled_impressions"}
    assert parents("click_model") == {"training_set"}
    assert parents("deployed_model") == {"click_model"}
    lagged = graph.get(dg.AssetKey("labeled_impressions")).partitions_def
    assert lagged.end_offset == -1


@pytest.mark.parametrize("chain", ["user_profiles", "segment_profiles"])
def test_a_labeled_hour_waits_for_the_snapshots_before_it_and_its_own(graph, chain):
    """Hour H reads snapshot H-1; the lake's first hour has none, and only snapshot H says where
    the chain's history starts, so H waits for both (a backfill then never labels an hour before
    its chain reached it)."""
    labeled = dg.AssetKey("labeled_impressions")
    hourly = graph.get(dg.AssetKey(chain)).partitions_def
    lagged = graph.get(labeled).partitions_def
    mapping = graph.get_partition_mapping(labeled, dg.AssetKey(chain))
    first = lagged.get_first_partition_key()
    for key, expected in ((first, [first]),
                          ("2026-11-24-05:00", ["2026-11-24-04:00", "2026-11-24-05:00"])):
        up = mapping.get_upstream_mapped_partitions_result_for_partitions(
            lagged.subset_with_partition_keys([key]), lagged, hourly,
            current_time=datetime(2026, 11, 25, tzinfo=UTC))
        assert sorted(up.partitions_subset.get_partition_keys()) == expected


def test_the_serving_sensor_is_registered():
    assert defs.resolve_sensor_def("landing_to_serving") is not None
