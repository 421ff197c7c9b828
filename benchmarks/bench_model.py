"""Model quality on the synthetic streams: AUC of the trained click model against the oracle
(the generator's true click probability) and against the imperfect production model whose
scores ride the prediction stream — all on the same validation rows of the same run.

    python benchmarks/bench_model.py [--users 50000] [--hours 36] [--root DIR]

Writes bench-results/model.json. Target (DESIGN §8): AUC >= 0.97 x oracle AUC.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np

from clicklake.flow import run_flow
from clicklake.platform.simulate import generate
from clicklake.platform.timeutil import parse_instant
from clicklake.platform.training.metrics import auc
from clicklake.platform.training_set import latest_training_set
from clicklake.resources.endpoint import LocalModelServer
from clicklake.resources.lake import LakeResource
from clicklake.resources.online_store import SqliteOnlineStore
from clicklake.resources.trainer import LocalTrainer

START = parse_instant("2026-11-24T00:00:00Z")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--hours", type=int, default=36)
    ap.add_argument("--root", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="clicklake-bench-model-")
    lake = LakeResource(root=root)
    t0 = time.perf_counter()
    summary = generate(lake.store(), start_ms=START, hours=args.hours, users=args.users, seed=7)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = run_flow({"lake": lake, "trainer": LocalTrainer(), "endpoint": LocalModelServer(),
                       "online_store": SqliteOnlineStore(path=f"{root}/online/online.db")},
                      START, args.hours)
    t_flow = time.perf_counter() - t0
    model = result.latest("click_model")
    store = lake.store()
    ts = latest_training_set(store)
    rows = store.read_parquet(f"{ts.root}/validation_rows.parquet")
    labeled = [store.read_parquet(f"lake/labeled/impressions/dt={h[:10]}/hour={h[11:13]}/"
                                  "part-0.parquet", ["impression_id", "label", "pred_score"])
               for h in ts.manifest.validation_hours]
    import pyarrow as pa

    val = pa.concat_tables(labeled)
    assert val["impression_id"].to_pylist() == rows["impression_id"].to_pylist()
    y = val["label"].to_numpy()
    score = val["pred_score"].to_numpy(zero_copy_only=False).astype(np.float64)
    has = ~np.isnan(score)
    production = auc(y[has], score[has])
    # Ours on the same rows as the production model's (those with a score), for a like-for-like
    # comparison: model_auc is over every validation row.
    from clicklake.platform.training import registry
    from clicklake.platform.training.artifact import load_booster
    from clicklake.platform.training.csvformat import read_sagemaker_csv
    from clicklake.platform.training.local import predict

    y_csv, x = read_sagemaker_csv([store.read_bytes(k) for k in store.list(ts.validation_prefix)],
                                  ts.manifest.n_features)
    assert np.array_equal(y_csv, y), "the validation CSV's rows are not the labeled rows"
    ours = predict(load_booster(registry.artifact_of(store, model["model_id"])), x)
    ours_same_rows = auc(y[has], ours[has])
    out = {
        "users": args.users, "hours": args.hours,
        "impressions": summary.events["impressions"], "generate_s": round(t_gen, 1),
        "flow_s": round(t_flow, 1), "train_rows": ts.stats["train_rows"],
        "validation_rows": ts.stats["validation_rows"],
        "model_auc": model["auc"], "oracle_auc": model.get("oracle_auc"),
        "auc_to_oracle": model.get("auc_to_oracle"),
        "rows_with_a_production_score": int(has.sum()),
        "production_model_auc (prediction stream, the rows with a score)": production,
        "model_auc_on_the_rows_with_a_production_score": ours_same_rows,
        "log_loss": model["log_loss"], "ece": model["ece"], "pr_auc": model["pr_auc"],
        "spend_saved_at_95pct_clicks": model["spend_saved"],
        "train_seconds": model["train_seconds"], "train_rows_per_s": model["train_rows_per_s"],
        "gate": "failed" if result.failed_checks else "passed",
    }
    print(json.dumps(out, indent=2))
    path = pathlib.Path(__file__).resolve().parent.parent / "bench-results" / "model.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
