"""The whole graph end to end on a small generated stream, through Dagster, as `make demo` runs it."""

from __future__ import annotations

import shutil

import dagster as dg
import numpy as np
import pytest

from clicklake.flow import run_flow
from clicklake.platform import raw
from clicklake.platform.labeled import labeled_key
from clicklake.platform.simulate import generate, read_truth
from clicklake.platform.storage import Store
from clicklake.platform.timeutil import HOUR_MS, hive_hour_path, hour_partition_key, parse_instant
from clicklake.platform.training import metrics, registry
from clicklake.platform.training_set import latest_training_set
from clicklake.resources.endpoint import LocalModelServer
from clicklake.resources.lake import LakeResource
from clicklake.resources.trainer import LocalTrainer

START = parse_instant("2026-11-24T00:00:00Z")
HOURS = 4


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lake"))
    lake = LakeResource(root=root)
    generate(lake.store(), start_ms=START, hours=HOURS, users=800, seed=3)
    result = run_flow({"lake": lake, "trainer": LocalTrainer(), "endpoint": LocalModelServer()},
                      START, HOURS,
                      # the flow, not the model's quality: a floor of 0 and leaves small enough
                      # for a stream this tiny
                      model_config={"auc_floor": 0.0, "min_child_weight": 1})
    return lake.store(), result


def test_every_asset_materializes_with_passing_checks(flow):
    _, result = flow
    assert result.failed_checks == []
    counts = {name: len(mats) for name, mats in result.materializations.items()}
    hourly = {a: HOURS for a in ("raw_impressions", "raw_clicks", "raw_predictions",
                                 "user_hour_tiles", "user_profiles", "segment_profiles")}
    lagged = {a: HOURS - 1 for a in ("labeled_impressions", "prediction_outcomes")}
    assert counts == {**hourly, **lagged, "training_set": 1, "click_model": 1, "deployed_model": 1}


def test_labeled_hours_hold_every_kept_impression_once(flow):
    store, _ = flow
    for h in range(HOURS - 1):
        hour = START + h * HOUR_MS
        labeled = store.read_parquet(labeled_key(hour))
        kept = raw.read_raw(store, "impressions", hour)
        assert labeled["impression_id"].to_pylist() == kept["impression_id"].to_pylist()
        assert set(labeled["label"].to_pylist()) <= {0, 1}


def test_one_run_per_hour_rebuilds_what_the_ranged_runs_built(flow, tmp_path):
    """The flow builds each partitions definition's hours in one ranged run (as a backfill run
    does); one run per hour, as the hourly schedule launches them, rebuilds the same labeled
    hours and prediction outcomes from the landing zone, a materialization per hour."""
    import dagster as dg

    from clicklake.assets.labeled import labeled_assets
    from clicklake.assets.profiles import profile_assets
    from clicklake.assets.raw import raw_assets

    store, flow_result = flow
    root = tmp_path / "lake"
    shutil.copytree(store.root, root, ignore=shutil.ignore_patterns("raw", "profiles",
                                                                     "tiles", "labeled",
                                                                     "outcomes"))
    copy = Store(str(root))
    assert not copy.list("lake/labeled/")  # rebuilt from landing, not copied
    lake, instance = LakeResource(root=copy.root), dg.DagsterInstance.ephemeral()
    keys = [hour_partition_key(START + h * HOUR_MS) for h in range(HOURS)]
    for key in keys:
        assert dg.materialize([*raw_assets, *profile_assets], resources={"lake": lake},
                              instance=instance, partition_key=key).success
    for key in keys[:-1]:
        result = dg.materialize(labeled_assets, resources={"lake": lake}, instance=instance,
                                partition_key=key)
        assert result.success
        for asset in ("labeled_impressions", "prediction_outcomes"):
            assert [m.partition for m in result.asset_materializations_for_node(asset)] == [key]
    for asset in ("labeled_impressions", "prediction_outcomes"):
        assert [m["partition"] for m in flow_result.materializations[asset]] == keys[:-1]
    for h in range(HOURS - 1):
        hour = START + h * HOUR_MS
        for key in (labeled_key(hour),
                    f"lake/outcomes/predictions/{hive_hour_path(hour)}/part-0.parquet"):
            assert copy.read_parquet(key).equals(store.read_parquet(key)), key


def test_the_deployed_model_is_the_registry_champion(flow):
    store, result = flow
    model = result.latest("click_model")
    assert result.latest("deployed_model")["model_id"] == model["model_id"]
    assert registry.champion(store).model_id == model["model_id"]
    assert 0.5 < model["auc"] <= 1
    # the oracle's AUC is the generator's true probabilities scored on the same validation rows
    ts = latest_training_set(store)
    rows = store.read_parquet(f"{ts.root}/validation_rows.parquet").to_pylist()
    truth = read_truth(store).to_pylist()
    p_click = {r["impression_id"]: r["p_click"] for r in truth}
    y = [r["label"] for r in rows]
    assert model["oracle_auc"] == pytest.approx(
        metrics.auc(np.array(y), np.array([p_click[r["impression_id"]] for r in rows])))
    assert 0 < sum(y) < len(y) and model["oracle_auc"] > model["auc"] - 0.05
    server = LocalModelServer()
    assert server.load_champion(store) == model["model_id"]


def test_the_gate_blocks_a_worse_model_and_keeps_the_champion(flow):
    """A model under the AUC floor fails its blocking check: deployed_model does not run, the
    registry records the rejection and the champion stays."""
    import dagster as dg

    from clicklake.assets.training import training_assets

    store, _ = flow
    champion = registry.champion(store).model_id
    lake = LakeResource(root=store.root)
    run = dg.materialize(training_assets, resources={
        "lake": lake, "trainer": LocalTrainer(), "endpoint": LocalModelServer()},
        run_config={"ops": {"click_model": {"config": {"auc_floor": 0.999}}}},
        raise_on_error=False)
    [gate] = run.get_asset_check_evaluations()
    assert gate.check_name == "model_gate" and not gate.passed
    materialized = {e.step_materialization_data.materialization.asset_key.to_user_string()
                    for e in run.get_asset_materialization_events()}
    assert materialized == {"training_set", "click_model"}
    rejected = registry.history(store)[-1]
    assert rejected.status == registry.REJECTED and "below the floor" in rejected.reason
    assert registry.champion(store).model_id == champion


def _lake_copy(store: Store, tmp_path) -> Store:
    shutil.copytree(store.root, tmp_path / "copy")
    return Store(str(tmp_path / "copy"))


def _champion_as(store: Store, model_id: str, metrics: dict, **manifest_changes) -> bytes:
    """Register the current champion's booster again as `model_id` (its manifest changed as
    given, its metrics as given) and promote it; its artifact."""
    import dataclasses

    champion = registry.champion(store).model_id
    artifact = registry.artifact_of(store, champion)
    manifest = dataclasses.replace(registry.manifest_of(store, champion), **manifest_changes)
    registry.register(store, model_id, artifact, manifest, metrics)
    registry.promote(store, model_id)
    return artifact


def _train_again(store: Store):
    """The training assets once more on `store`: the run and its gate's evaluation."""
    import dagster as dg

    from clicklake.assets.training import training_assets

    run = dg.materialize(training_assets, resources={
        "lake": LakeResource(root=store.root), "trainer": LocalTrainer(),
        "endpoint": LocalModelServer()},
        run_config={"ops": {"click_model": {"config": {"auc_floor": 0.0, "min_child_weight": 1}}}},
        raise_on_error=False)
    [gate] = run.get_asset_check_evaluations()
    return run, gate


def _champion_auc_on_validation(store: Store, artifact: bytes, blind_columns=()) -> float:
    """The AUC of `artifact`'s booster on the latest training set's validation CSV, with
    `blind_columns` set to 0 (out of vocabulary)."""
    from clicklake.platform.features import FEATURE_NAMES
    from clicklake.platform.training.artifact import load_booster
    from clicklake.platform.training.csvformat import read_sagemaker_csv
    from clicklake.platform.training.local import predict
    from clicklake.platform.training.metrics import auc
    from clicklake.platform.training_set import latest_training_set

    ts = latest_training_set(store)
    y, x = read_sagemaker_csv([store.read_bytes(k) for k in store.list(ts.validation_prefix)],
                              ts.manifest.n_features)
    x[:, [FEATURE_NAMES.index(c) for c in blind_columns]] = 0
    return auc(y, predict(load_booster(artifact), x))


def test_the_gate_scores_the_champion_on_the_new_models_validation_rows(flow, tmp_path):
    """The champion's recorded AUC was measured on older hours (easier ones, say): the gate
    scores the champion on the new model's own validation rows instead. A champion recorded at
    0.999 but no better on today's rows does not block an equally good new model."""
    import pytest

    store = _lake_copy(flow[0], tmp_path)
    artifact = _champion_as(store, "clicklake-xgb-easy-hours", {"auc": 0.999})
    run, gate = _train_again(store)
    assert gate.passed, gate.description
    assert gate.metadata["champion_auc_recorded"].value == 0.999
    assert gate.metadata["champion_auc"].value == pytest.approx(
        _champion_auc_on_validation(store, artifact))
    assert registry.champion(store).model_id == run.asset_materializations_for_node(
        "click_model")[0].metadata["model_id"].value


def test_a_champion_that_trained_on_the_validation_hours_is_judged_by_its_recorded_auc(
        flow, tmp_path):
    """The split moved back (more validation hours asked, a labeled hour removed): the champion
    trained on some of the new validation hours. Scored on them it looks far better than it is
    (in-sample), and a good model was rejected against that: its recorded AUC is used."""
    from clicklake.platform.training_set import latest_training_set

    store = _lake_copy(flow[0], tmp_path)
    split = latest_training_set(store).manifest
    _champion_as(store, "clicklake-xgb-saw-them", {"auc": 0.42},
                 train_hours=split.train_hours + split.validation_hours[:1])
    _, gate = _train_again(store)
    assert gate.metadata["champion_auc"].value == gate.metadata[
        "champion_auc_recorded"].value == 0.42
    assert gate.passed, gate.description


def test_a_champion_whose_artifact_is_unreadable_is_judged_by_its_recorded_auc(flow, tmp_path):
    """A truncated or foreign champion artifact raised out of click_model after the new model
    was registered: it never got a verdict, and every retrain failed the same way."""
    store = _lake_copy(flow[0], tmp_path)
    _champion_as(store, "clicklake-xgb-truncated", {"auc": 0.42})
    store.write_bytes(registry.artifact_key("clicklake-xgb-truncated"), b"\x1f\x8b\x08 cut")
    run, gate = _train_again(store)
    assert gate.metadata["champion_auc"].value == 0.42
    assert gate.passed and run.success, gate.description


def test_a_champion_with_other_vocabularies_is_scored_with_its_own_codes(flow, tmp_path):
    """A champion whose categorical vocabularies differ from the new training set's is scored on
    the same validation rows encoded its own way: with empty vocabularies, every categorical
    column of its matrix is 0 (out of vocabulary)."""
    import numpy as np
    import pytest

    from clicklake.platform.features import CATEGORICAL

    store = _lake_copy(flow[0], tmp_path)
    champion = registry.manifest_of(store, registry.champion(store).model_id)
    artifact = _champion_as(store, "clicklake-xgb-blind", {"auc": 0.5},
                            categorical={c: [] for c in champion.categorical})
    _, gate = _train_again(store)
    assert np.isfinite(gate.metadata["champion_auc"].value)
    assert gate.metadata["champion_auc"].value == pytest.approx(
        _champion_auc_on_validation(store, artifact, CATEGORICAL))


def _deploy_a_copy_of_the_champion(store, model_id: str, endpoint, gated: bool):
    """Register the champion's artifact as `model_id` (its gate passed when `gated`), make it
    click_model's latest materialization, and run deployed_model: the run's result."""
    import dagster as dg

    from clicklake.assets.training import deployed_model

    champion = registry.champion(store).model_id
    registry.register(store, model_id, registry.artifact_of(store, champion),
                      registry.manifest_of(store, champion), {"auc": 0.9})
    if gated:
        registry.passed(store, model_id, "passed model_gate")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "click_model", metadata={"model_id": model_id}))
        return dg.materialize([deployed_model], instance=instance, raise_on_error=False,
                              resources={"lake": LakeResource(root=store.root),
                                         "endpoint": endpoint})


def test_a_model_never_gated_is_not_deployed(flow, tmp_path):
    """deployed_model promotes only a model whose gate passed: one whose click_model run died
    between training (registered, materialized) and its gate has no verdict and is refused."""
    store = _lake_copy(flow[0], tmp_path)
    champion = registry.champion(store).model_id
    assert registry.gate_verdict(store, champion).status == registry.PASSED
    run = _deploy_a_copy_of_the_champion(store, "clicklake-xgb-ungated", LocalModelServer(),
                                         gated=False)
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    assert "has no gate verdict" in str(failure.event_specific_data.error)
    assert registry.champion(store).model_id == champion


def test_the_run_deploys_the_model_it_gated(flow, tmp_path):
    """Another click_model run landing between this run's click_model and its deployed_model
    (two runs side by side) leaves this run deploying its own gated model, not the newer one."""
    from clicklake.assets.training import deployed_model

    store = _lake_copy(flow[0], tmp_path)
    champion = registry.champion(store).model_id
    for model_id in ("clicklake-xgb-ours", "clicklake-xgb-theirs"):
        registry.register(store, model_id, registry.artifact_of(store, champion),
                          registry.manifest_of(store, champion), {"auc": 0.9})
        registry.passed(store, model_id, "passed model_gate")

    @dg.asset(name="click_model")
    def trained_here(context):
        yield dg.MaterializeResult(metadata={"model_id": "clicklake-xgb-ours"})
        # the other run's materialization lands while this run is between its two steps
        context.instance.report_runless_asset_event(dg.AssetMaterialization(
            "click_model", metadata={"model_id": "clicklake-xgb-theirs"}))

    with dg.instance_for_test() as instance:
        run = dg.materialize([trained_here, deployed_model], instance=instance,
                             resources={"lake": LakeResource(root=store.root),
                                        "endpoint": LocalModelServer()})
        assert instance.get_latest_materialization_event(dg.AssetKey("click_model")) \
            .asset_materialization.metadata["model_id"].value == "clicklake-xgb-theirs"
    assert run.asset_materializations_for_node("deployed_model")[0] \
        .metadata["model_id"].value == "clicklake-xgb-ours"
    assert registry.champion(store).model_id == "clicklake-xgb-ours"


def test_a_model_whose_deploy_fails_is_not_promoted(flow, tmp_path):
    """The API follows the champion and encodes with its vocabularies: a gated model whose
    deploy failed (or is still rolling out) must leave the champion where it was."""

    class FailingEndpoint(LocalModelServer):
        def deploy(self, store, model_id, prefix="lake"):
            raise RuntimeError("the endpoint update failed and rolled back")

    store = _lake_copy(flow[0], tmp_path)
    champion = registry.champion(store).model_id
    run = _deploy_a_copy_of_the_champion(store, "clicklake-xgb-next", FailingEndpoint(),
                                         gated=True)
    assert not run.success
    assert registry.champion(store).model_id == champion


def test_a_model_that_failed_its_gate_is_never_deployed(flow, tmp_path):
    """deployed_model refuses a model its gate rejected before the endpoint is touched: after
    the deploy, the champion pointer's refusal would come too late (the endpoint would serve
    the rejected model while the registry named the old one)."""
    from clicklake.assets.training import deployed_model

    deployed = []

    class Recording(LocalModelServer):
        def deploy(self, store, model_id, prefix="lake"):
            deployed.append(model_id)
            return super().deploy(store, model_id, prefix)

    store = _lake_copy(flow[0], tmp_path)
    champion = registry.champion(store).model_id
    registry.register(store, "clicklake-xgb-bad", registry.artifact_of(store, champion),
                      registry.manifest_of(store, champion), {"auc": 0.51})
    registry.reject(store, "clicklake-xgb-bad", "AUC 0.5100 is below the floor 0.6000")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "click_model", metadata={"model_id": "clicklake-xgb-bad"}))
        run = dg.materialize([deployed_model], instance=instance, raise_on_error=False,
                             resources={"lake": LakeResource(root=store.root),
                                        "endpoint": Recording()})
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    assert "failed its gate" in str(failure.event_specific_data.error)
    assert deployed == [] and registry.champion(store).model_id == champion
