"""Cross-validation, fold jobs + collect, the protocol gap and the ablation, on the small
synthetic set (32 px, 1 epoch, no augmentation: the numbers are meaningless, the tables
and files are what is checked)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dermfuse.cli import main
from dermfuse.config import RunConfig
from dermfuse.runs.cv import collect, run_protocol_gap
from dermfuse.runs.cv_report import METRICS
from dermfuse.runs.holdout import load_cohort

TINY = ["--folds", "2", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--no-pretrained",
        "--set", "train.augment=false", "--set", "train.max_steps_per_epoch=2",
        "--set", "cam.backbone=cnn", "--set", "cam.epochs=1"]
pytestmark = pytest.mark.filterwarnings("ignore:The least populated class")


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["-q", *args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def n_clean(synth_small) -> int:
    return len(load_cohort(synth_small, progress=False).table)


@pytest.fixture(scope="module")
def cv_run(synth_small, tmp_path_factory):
    """`cv --fold 0`, collect, `cv --fold 1`, collect: the two summaries and the run dir."""
    out = tmp_path_factory.mktemp("cv") / "run"
    args = ["cv", str(synth_small), "--models", "cnn,meta_mlp", *TINY, "--out", str(out)]
    assert main(["-q", *args, "--fold", "0"]) == 0
    partial = collect(out, progress=False)
    partial_html = (out / "report.html").read_text()
    assert main(["-q", *args, "--fold", "1"]) == 0
    assert main(["-q", "cv", "--collect", str(out)]) == 0
    return {"dir": out, "args": args, "partial": partial, "partial_html": partial_html,
            "full": json.loads((out / "summary.json").read_text())}


def test_fold_job_then_collect_names_missing_folds(cv_run):
    partial = cv_run["partial"]
    assert partial["missing"] == {"cnn": [1], "meta_mlp": [1]} and not partial["complete"]
    assert len(partial["per_fold"]) == 2
    assert "Missing folds" in cv_run["partial_html"] and "cnn: 1" in cv_run["partial_html"]


def test_collect_after_every_fold_is_complete(cv_run, n_clean):
    full, d = cv_run["full"], cv_run["dir"]
    assert full["complete"] and full["missing"] == {}
    summary = pd.read_csv(d / "summary.csv")
    assert list(summary["variant"]) == ["cnn", "meta_mlp"] and (summary["n_folds"] == 2).all()
    for m in METRICS:
        assert f"{m}_mean" in summary and f"{m}_std" in summary and f"pooled_{m}" in summary
    per_fold = pd.read_csv(d / "per_fold.csv")
    assert per_fold.groupby("variant")["fold"].apply(sorted).to_dict() == {"cnn": [0, 1], "meta_mlp": [0, 1]}
    for v in ("cnn", "meta_mlp"):
        assert full["pooled"][v]["n_images"] == n_clean  # every clean image scored once, out of fold
        assert per_fold.loc[per_fold["variant"] == v, "n_images"].sum() == n_clean
        mean = per_fold.loc[per_fold["variant"] == v, "accuracy"].mean()
        assert full["stats"][v]["accuracy"]["mean"] == pytest.approx(mean, abs=1e-6)
        for k in (0, 1):
            for name in ("DONE", "metrics.json", "predictions.csv", "history.json"):
                assert (d / v / f"fold{k}" / name).is_file()
            assert not (d / v / f"fold{k}" / "checkpoint.pt").exists()


def test_folds_are_lesion_grouped_and_shared(cv_run, synth_small):
    d = cv_run["dir"]
    folds = pd.read_csv(d / "folds.csv", dtype={"image_id": str})
    lesions = pd.read_csv(synth_small / "metadata.csv", dtype={"image_id": str}).drop_duplicates("image_id")
    df = folds.merge(lesions[["image_id", "lesion_id"]], on="image_id")
    assert (df.groupby("lesion_id")["fold"].nunique() == 1).all()
    for v in ("cnn", "meta_mlp"):  # both models are tested on the same images in each fold
        for k in (0, 1):
            ids = pd.read_csv(d / v / f"fold{k}" / "predictions.csv", dtype={"image_id": str})["image_id"]
            assert set(ids) == set(folds.loc[folds["fold"] == k, "image_id"])


def test_report_holds_the_comparison(cv_run):
    html = (cv_run["dir"] / "report.html").read_text()
    assert "Model comparison (Fig. 8)" in html and "Missing folds" not in html
    for needle in ("SYNTHETIC DATA", "lesion-grouped", "Mean ± std over folds", "Pooled out-of-fold",
                   "Per-fold metrics", "Training curves", "Confusion matrix of the best variant", "ROC curves"):
        assert needle in html, needle
    assert html.count("data:image/png;base64,") >= 7  # comparison, 2 curves, 2 confusion, 2 ROC
    # the other model against the best one, paired on the same out-of-fold rows
    full = cv_run["full"]
    boot = full["comparison_bootstrap"]
    other = ({"cnn", "meta_mlp"} - {full["best"]}).pop()
    assert boot["reference"] == full["best"] and [r["variant"] for r in boot["rows"]] == [other]
    d = boot["rows"][0]["accuracy"]
    assert d["diff"] == pytest.approx(full["pooled"][other]["accuracy"] - full["pooled"][full["best"]]["accuracy"])
    assert "Pooled paired differences with bootstrap intervals" in html


def test_rerun_skips_finished_folds_and_other_config_is_refused(cv_run, capsys):
    d = cv_run["dir"]
    stamp = (d / "cnn" / "fold0" / "DONE").stat().st_mtime_ns
    code, _ = _cli(capsys, *cv_run["args"])
    assert code == 0 and (d / "cnn" / "fold0" / "DONE").stat().st_mtime_ns == stamp
    code, err = _cli(capsys, *cv_run["args"], "--fold", "1", "--seed", "3")
    assert code == 2 and "seed" in err and "Traceback" not in err


def test_collect_says_when_folds_trained_on_different_hardware(cv_run, tmp_path):
    d = tmp_path / "mixed"
    import shutil

    shutil.copytree(cv_run["dir"], d)
    (here,) = {json.loads(p.read_text())["hardware"] for p in d.glob("*/fold*/metrics.json")}
    assert here in ("cpu", "cuda", "cuda, mixed precision")
    assert not any("hardware" in w for w in collect(d, progress=False)["warnings"])

    def record(variant: str, fold: int, hardware: str | None) -> None:
        path = d / variant / f"fold{fold}" / "metrics.json"
        m = json.loads(path.read_text())
        if hardware is None:
            del m["hardware"]  # a fold from before dermfuse recorded it
        else:
            m["hardware"] = hardware
        path.write_text(json.dumps(m))

    record("meta_mlp", 1, None)
    assert not any("hardware" in w for w in collect(d, progress=False)["warnings"])
    record("cnn", 1, "tpu")  # a fold job on another machine
    (w,) = [w for w in collect(d, progress=False)["warnings"] if "hardware" in w]
    assert f"{here}: cnn fold 0, meta_mlp fold 0" in w and "tpu: cnn fold 1" in w
    assert "not recorded: meta_mlp fold 1" in w
    assert "different hardware or precision" in (d / "report.html").read_text()


def test_run_from_before_a_config_key_existed_continues(cv_run, tmp_path, capsys):
    """A run directory whose config.yaml predates a key ran with that key's default:
    continuing it with the default is no change; asking for another value is one."""
    d = tmp_path / "old"
    d.mkdir()
    for name in ("plan.json", "folds.csv"):
        (d / name).write_bytes((cv_run["dir"] / name).read_bytes())
    saved = yaml.safe_load((cv_run["dir"] / "config.yaml").read_text())
    del saved["train"]["calibration"]  # the default, none
    (d / "config.yaml").write_text(yaml.safe_dump(saved))
    args = [a if a != str(cv_run["dir"]) else str(d) for a in cv_run["args"]]
    code, err = _cli(capsys, *args, "--fold", "0", "--set", "train.calibration=temperature")
    assert code == 2 and "train.calibration: 'none' in the run directory, 'temperature' now" in err
    assert not (d / "cnn").exists()
    code, err = _cli(capsys, *args, "--fold", "0")
    assert code == 0 and (d / "cnn" / "fold0" / "DONE").is_file()


def test_fold_job_refuses_changed_folds(cv_run, tmp_path, capsys):
    d = tmp_path / "copy"
    d.mkdir()
    for name in ("config.yaml", "plan.json"):
        (d / name).write_bytes((cv_run["dir"] / name).read_bytes())
    folds = pd.read_csv(cv_run["dir"] / "folds.csv", dtype={"image_id": str})
    folds.loc[0, "fold"] = 1 - folds.loc[0, "fold"]
    folds.to_csv(d / "folds.csv", index=False)
    args = [a if a != str(cv_run["dir"]) else str(d) for a in cv_run["args"]]
    code, err = _cli(capsys, *args, "--fold", "0")
    assert code == 2 and "folds" in err and not (d / "cnn").exists()


def test_collect_on_a_folder_that_is_no_run(tmp_path, capsys):
    code, err = _cli(capsys, "cv", "--collect", str(tmp_path))
    assert code == 2 and "plan.json" in err


def test_protocol_gap(synth_small, tmp_path):
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size, cfg.out = str(synth_small), 32, str(tmp_path / "gap")
    cfg.train.epochs, cfg.train.augment, cfg.train.max_steps_per_epoch = 1, False, 2
    d = run_protocol_gap(cfg, ["meta_mlp"], folds=2, progress=False)
    s = json.loads((d / "summary.json").read_text())
    assert [v["name"] for v in s["variants"]] == ["meta_mlp", "meta_mlp@image"]
    assert s["best"] == "meta_mlp"  # never the leaky twin
    gap = pd.read_csv(d / "gap.csv")
    assert list(gap["metric"]) == list(METRICS) and (gap["variant"] == "meta_mlp").all()
    row = gap.set_index("metric").loc["accuracy"]
    assert row["inflation"] == pytest.approx(row["image_mean"] - row["grouped_mean"])
    folds = pd.read_csv(d / "folds.csv")
    assert {"fold", "fold_image", "group"} <= set(folds.columns)
    # both protocols scored every row once, so the pooled inflation is paired over the same images
    (boot,) = s["gap_bootstrap"]["rows"]
    assert (boot["variant"], boot["reference"], boot["n_images"]) == ("meta_mlp@image", "meta_mlp", len(folds))
    assert boot["accuracy"]["diff"] == pytest.approx(row["pooled_inflation"], abs=1e-6)
    assert row["pooled_inflation_ci_low"] <= row["pooled_inflation"] <= row["pooled_inflation_ci_high"]
    assert gap.set_index("metric").loc["auc_macro", ["pooled_inflation_ci_low"]].isna().all()  # not resampled
    # the gap split by exposure: brute force over folds.csv decides which images the leaky
    # model had seen a sibling of; the two subsets partition the paired rows
    exp = s["gap_exposure"]
    by_group = folds.groupby("group")
    brute = {r.image_id for r in folds.itertuples()
             if (by_group.get_group(r.group)["fold_image"] != r.fold_image).any()}
    assert exp["n_exposed"] == len(brute) and 0 < len(brute) < len(folds)
    (seen,), (unseen,) = (exp["subsets"][k]["rows"] for k in ("exposed", "not exposed"))
    assert seen["n_images"] == len(brute) and seen["n_images"] + unseen["n_images"] == len(folds)
    preds = {v: pd.concat(pd.read_csv(p) for p in sorted((d / v).glob("fold*/predictions.csv")))
             for v in ("meta_mlp", "meta_mlp@image")}
    classes = json.loads((d / "plan.json").read_text())["data"]["classes"]
    for v, side in (("meta_mlp", "reference_scores"), ("meta_mlp@image", "variant_scores")):
        rows = preds[v][preds[v]["image_id"].isin(brute)]
        pred = rows[[f"p_{c}" for c in classes]].to_numpy().argmax(1)
        assert seen[side]["accuracy"] == pytest.approx((pred == rows["label"].map(classes.index)).mean())
    assert seen["accuracy"]["diff"] == pytest.approx(seen["variant_scores"]["accuracy"] - seen["reference_scores"]["accuracy"])
    html = (d / "report.html").read_text()
    assert "Protocol gap" in html and "image-level (leaky)" in html and "resamples of whole lesions" in html
    from rich.console import Console

    from dermfuse.runs.cv import render_summary

    term = Console(width=200, record=True)
    term.print(render_summary(s))
    text = term.export_text()
    assert "protocol gap: image-level − grouped" in text and "not exposed" in text
    assert f"{boot['accuracy']['diff']:+.3f}" in text and str(len(brute)) in text
    assert "Where the gap comes from" in html and f"{len(brute)} of the data set's {len(folds)} images" in html


def test_protocol_gap_with_one_fold_finished_pairs_the_same_images(synth_small, tmp_path):
    """After one fold per protocol, the two finished test folds overlap only in part: the
    pooled gap must score both protocols on that overlap, the rows its interval pairs."""
    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size, cfg.out = str(synth_small), 32, str(tmp_path / "gap")
    cfg.train.epochs, cfg.train.augment, cfg.train.max_steps_per_epoch = 1, False, 2
    d = run_protocol_gap(cfg, ["meta_mlp"], folds=2, fold=0, progress=False)
    s = collect(d, progress=False)
    assert not s["complete"]
    ids = [set(pd.read_csv(d / v / "fold0" / "predictions.csv")["image_id"]) for v in ("meta_mlp", "meta_mlp@image")]
    common = ids[0] & ids[1]
    assert 0 < len(common) < min(map(len, ids))  # the folds differ between protocols
    (boot,) = s["gap_bootstrap"]["rows"]
    assert boot["n_images"] == len(common)
    rows = {r["metric"]: r for r in s["gap"]}
    for m in ("accuracy", "balanced_accuracy"):
        assert rows[m]["pooled_n_images"] == len(common)
        assert rows[m]["pooled_inflation"] == pytest.approx(boot[m]["diff"], abs=1e-9)
        assert rows[m]["pooled_grouped"] == pytest.approx(boot["reference_scores"][m], abs=1e-9)
        assert rows[m]["pooled_image"] == pytest.approx(boot["variant_scores"][m], abs=1e-9)
    # each variant's own pooled summary still covers all of its finished rows
    assert s["pooled"]["meta_mlp"]["n_images"] == len(ids[0])
    gap = pd.read_csv(d / "gap.csv").set_index("metric")
    assert (gap["pooled_n_images"] == len(common)).all()


@pytest.mark.parametrize("resume", [False, True])
def test_ablate_resume_reaches_the_cam_backbone(resume, synth_small, tmp_path, monkeypatch):
    """An interrupted fold continues its CAM backbone from its checkpoint too, not only the
    variants: --resume must reach heatmap_stage."""
    import dermfuse.training.heatmap_stage as heatmaps

    class Reached(Exception):
        pass

    seen = []

    def stage(*args, **kwargs):
        seen.append(kwargs.get("resume"))
        raise Reached

    monkeypatch.setattr(heatmaps, "heatmap_stage", stage)
    with pytest.raises(Reached):
        main(["-q", "ablate", str(synth_small), *TINY, "--fold", "0", "--out", str(tmp_path / "a"),
              *(["--resume"] if resume else [])])
    assert seen == [resume]


def test_ablation(synth_small, tmp_path, capsys, n_clean):
    out = tmp_path / "ablate"
    code, _ = _cli(capsys, "ablate", str(synth_small), *TINY, "--out", str(out))
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    names = ["heatmap+meta", "heatmap-only", "image+meta", "image-only", "overlay+meta", "overlay-only"]
    assert [v["name"] for v in s["variants"]] == names and s["complete"]
    assert len(pd.read_csv(out / "summary.csv")) == 6 and len(pd.read_csv(out / "per_fold.csv")) == 12
    ab = pd.read_csv(out / "ablation.csv")
    assert list(ab["variant"]) == names[1:] and (ab["reference"] == "heatmap+meta").all()
    assert (ab["n_pairs"] == 2).all()
    per = pd.DataFrame(s["per_fold"]).set_index(["variant", "fold"])
    diffs = [per.loc[("image+meta", k), "balanced_accuracy"] - per.loc[("heatmap+meta", k), "balanced_accuracy"]
             for k in (0, 1)]
    row = ab.set_index("variant").loc["image+meta"]
    assert row["balanced_accuracy_diff_mean"] == pytest.approx(np.mean(diffs), abs=1e-6)
    assert row["balanced_accuracy_diff_std"] == pytest.approx(np.std(diffs, ddof=1), abs=1e-6)
    assert len(s["ablation"]["per_fold"]) == 10
    # pooled paired differences with a lesion-bootstrap interval around them
    boot = s["ablation"]["bootstrap"]
    assert boot["resampled"] == "lesion" and [r["variant"] for r in boot["rows"]] == names[1:]
    folds = pd.read_csv(out / "folds.csv", dtype={"group": str})
    for r in boot["rows"]:
        assert r["n_images"] == n_clean and r["n_groups"] == folds["group"].nunique() < n_clean
        d = r["balanced_accuracy"]
        assert d["diff"] == pytest.approx(s["pooled"][r["variant"]]["balanced_accuracy"]
                                          - s["pooled"]["heatmap+meta"]["balanced_accuracy"])
        assert d["low"] <= d["diff"] <= d["high"]
    assert row["accuracy_ci_low"] <= row["accuracy_pooled_diff"] <= row["accuracy_ci_high"]
    meta = {(r["variant"], r["reference"]): r for r in s["ablation"]["metadata_bootstrap"]["rows"]}
    assert set(meta) == {("heatmap+meta", "heatmap-only"), ("image+meta", "image-only"),
                         ("overlay+meta", "overlay-only")}
    assert meta[("image+meta", "image-only")]["macro_f1"]["diff"] == pytest.approx(
        s["pooled"]["image+meta"]["macro_f1"] - s["pooled"]["image-only"]["macro_f1"])
    cams = sorted(p.parent.name for p in (out / "_cam").glob("*/maps.npy"))  # one CAM stage per fold
    assert cams == ["grouped-fold0-32px", "grouped-fold1-32px"]
    assert all(s["pooled"][n]["n_images"] == n_clean for n in names)
    html = (out / "report.html").read_text()
    assert "Ablation: paired differences" in html and "heatmap+meta (reference, absolute)" in html
    assert "Per-fold paired differences" in html and "SYNTHETIC DATA" in html
    assert "Pooled paired differences with bootstrap intervals" in html and "resamples of whole lesions" in html
    assert "What the metadata branch adds, per input" in html

    # a run begun before folds.csv had a group column resamples images, and says so;
    # running a fold job again (every variant DONE: nothing trains) adds the column
    folds.drop(columns="group").to_csv(out / "folds.csv", index=False)
    old = collect(out, progress=False)["ablation"]["bootstrap"]
    assert old["resampled"] == "image" and all(r["n_groups"] == n_clean for r in old["rows"])
    code, _ = _cli(capsys, "ablate", str(synth_small), *TINY, "--out", str(out), "--fold", "0")
    assert code == 0 and "group" in pd.read_csv(out / "folds.csv").columns
    assert collect(out, progress=False)["ablation"]["bootstrap"]["resampled"] == "lesion"

    # a run folder begun before config_version 2 (split: lesion, seed:, model.cam_*, plan
    # without config_version) takes fold jobs with today's equivalent options
    _to_version_1(out)
    (out / "heatmap-only" / "fold0" / "DONE").unlink()  # trains again, on the saved fold-0 maps
    code, _ = _cli(capsys, "ablate", str(synth_small), *TINY, "--out", str(out), "--fold", "0")
    assert code == 0 and (out / "heatmap-only" / "fold0" / "DONE").exists()
    assert sorted(p.name for p in (out / "_cam").iterdir()) == ["lesion-fold0-32px", "lesion-fold1-32px"]
    assert json.loads((out / "plan.json").read_text())["split"] == "grouped"
    assert collect(out, progress=False)["ablation"]["bootstrap"]["resampled"] == "lesion"


def _to_version_1(run_dir):
    """Rewrite a run folder's config.yaml and plan.json as a version-1 run wrote them."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    del cfg["config_version"]
    cfg["seed"] = cfg["data"].pop("split_seed")
    cfg["train"]["seed"] = cfg["train"].pop("init_seed")
    cfg["model"].update({f"cam_{k}": v for k, v in cfg.pop("cam").items()})
    cfg["data"]["split"] = "lesion"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    plan = json.loads((run_dir / "plan.json").read_text())
    del plan["config_version"]
    plan["split"] = "lesion"
    plan["variants"] = [{**v, "split": "lesion"} for v in plan["variants"]]
    (run_dir / "plan.json").write_text(json.dumps(plan))
    for folder in (run_dir / "_cam").iterdir():
        folder.rename(folder.with_name(folder.name.replace("grouped-", "lesion-")))


def test_a_variant_does_not_depend_on_what_ran_before_it(synth_small, tmp_path):
    """Initial weights are seeded per model, so FT-MultiCNN (and its CAM backbone) trained
    after the plain CNN in one job equals FT-MultiCNN trained alone: a fold job that runs
    one model, or one resumed after a crash, reproduces the full job's numbers."""
    runs = {}
    for name, models in (("after_cnn", "cnn,ft_multicnn:heatmap"), ("alone", "ft_multicnn:heatmap")):
        out = tmp_path / name
        assert main(["-q", "cv", str(synth_small), "--models", models, *TINY, "--fold", "0", "--out", str(out)]) == 0
        runs[name] = out
    maps = [np.load(next((runs[n] / "_cam").glob("*/maps.npy"))) for n in runs]
    np.testing.assert_array_equal(*maps)
    preds = [pd.read_csv(runs[n] / "ft_multicnn+heatmap" / "fold0" / "predictions.csv") for n in runs]
    pd.testing.assert_frame_equal(*preds)


def test_ablate_variants_runs_part_of_the_grid(synth_small, tmp_path, capsys):
    """`--variants` trains only the named variants; the plan keeps all six, so collect names
    the rest as missing, no CAM backbone is trained without a heatmap or overlay variant,
    and the part scores exactly as the same variants of a full fold job."""
    part, full = tmp_path / "part", tmp_path / "full"
    code, _ = _cli(capsys, "ablate", str(synth_small), *TINY, "--fold", "0", "--out", str(part),
                   "--variants", "image-only, image+meta")
    assert code == 0
    assert sorted(p.parent.parent.name for p in part.glob("*/fold0/DONE")) == ["image+meta", "image-only"]
    assert not (part / "_cam").exists()
    plan = json.loads((part / "plan.json").read_text())
    assert len(plan["variants"]) == 6
    s = collect(part, progress=False)
    assert s["missing"] == {"heatmap+meta": [0, 1], "heatmap-only": [0, 1], "image+meta": [1], "image-only": [1],
                            "overlay+meta": [0, 1], "overlay-only": [0, 1]}
    assert main(["-q", "ablate", str(synth_small), *TINY, "--fold", "0", "--out", str(full)]) == 0
    for v in ("image-only", "image+meta"):
        pd.testing.assert_frame_equal(pd.read_csv(part / v / "fold0" / "predictions.csv"),
                                      pd.read_csv(full / v / "fold0" / "predictions.csv"))

    code, err = _cli(capsys, "ablate", str(synth_small), *TINY, "--fold", "0", "--out", str(part),
                     "--variants", "image-only,heatmap")
    assert code != 0 and "unknown variant(s) 'heatmap'" in err and "heatmap+meta" in err
    code, err = _cli(capsys, "ablate", str(synth_small), *TINY, "--fold", "0", "--out", str(part), "--variants", ",")
    assert code != 0 and "no variant named" in err


# ---------------------------------------------------------------- inner folds of a holdout's training part


@pytest.fixture(scope="module")
def holdout_split(synth_small, tmp_path_factory):
    """A lesion-grouped holdout's split.csv (train / val / test) of the small synthetic set,
    written by the same function `dermfuse train` uses; no training."""
    from dermfuse.runs.cohort import holdout_split as write_split

    run = tmp_path_factory.mktemp("holdout")
    cfg = RunConfig()
    cfg.data.path = str(synth_small)
    write_split(cfg, load_cohort(synth_small, progress=False).table, run)
    split = pd.read_csv(run / "split.csv", dtype={"image_id": str})
    assert set(split["part"]) == {"train", "val", "test"}
    return run / "split.csv", split


def test_inner_folds_never_touch_the_holdout_test_rows(holdout_split, synth_small, tmp_path, capsys, monkeypatch):
    import dermfuse.runs.cv as cv_mod

    split_file, split = holdout_split
    part_of = split.set_index("image_id")["part"]
    cached: list[set[str]] = []  # the image ids of every image cache the run builds
    real_build = cv_mod.build_cache
    monkeypatch.setattr(cv_mod, "build_cache",
                        lambda table, **kw: cached.append(set(table["image_id"].astype(str))) or real_build(table, **kw))

    out = tmp_path / "inner"
    args = ["cv", str(synth_small), "--models", "cnn", *TINY, "--split-file", str(split_file), "--part", "train",
            "--out", str(out)]
    code, err = _cli(capsys, *args)
    assert code == 0, err
    train_ids = set(part_of.index[part_of == "train"])
    folds = pd.read_csv(out / "folds.csv", dtype={"image_id": str})
    assert set(folds["image_id"]) == train_ids  # every train row, and nothing else
    assert cached and all(ids <= train_ids for ids in cached)
    scored = pd.concat([pd.read_csv(out / "cnn" / f"fold{k}" / "predictions.csv", dtype={"image_id": str})
                        for k in (0, 1)])
    assert set(scored["image_id"]) == train_ids and not scored["image_id"].duplicated().any()
    assert not set(part_of.index[part_of != "train"]) & (set(folds["image_id"]) | set(scored["image_id"]))

    lesions = pd.read_csv(synth_small / "metadata.csv", dtype={"image_id": str}).drop_duplicates("image_id")
    df = folds.merge(lesions[["image_id", "lesion_id"]], on="image_id")
    assert len(df) == len(folds) and (df.groupby("lesion_id")["fold"].nunique() == 1).all()
    assert df["lesion_id"].duplicated().any()  # some lesion has several images: the grouping is exercised

    plan = json.loads((out / "plan.json").read_text())
    assert plan["rows"]["parts"] == ["train"] and plan["rows"]["n_rows"] == len(train_ids)
    assert plan["rows"]["n_left_out"] == int((part_of != "train").sum())
    assert plan["rows"]["groups_shared_with_left_out"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pooled"]["cnn"]["n_images"] == len(train_ids)
    assert "rows (inner folds)" in (out / "report.html").read_text()

    # a fold job over other rows is refused before it trains anything
    for other in ([], ["--split-file", str(split_file), "--part", "train,val"]):
        rest = [a for a in args if a not in ("--split-file", str(split_file), "--part", "train")]
        code, err = _cli(capsys, *rest, *other, "--fold", "0", "--resume")
        assert code == 2 and "--split-file" in err and "Traceback" not in err, err


def test_inner_folds_of_train_and_val(holdout_split, synth_small):
    from dermfuse.runs.cv import RowSelection, restrict_cohort

    split_file, split = holdout_split
    cohort = load_cohort(synth_small, progress=False)
    sub, info = restrict_cohort(cohort, RowSelection.parse(str(split_file), "train,val"))
    not_test = set(split.loc[split["part"] != "test", "image_id"])
    assert set(sub.table["image_id"]) == not_test and info["n_rows"] == len(not_test)
    want = cohort.labels[cohort.table["image_id"].isin(not_test).to_numpy()]
    assert (sub.labels == want).all()  # labels follow their rows
    with pytest.raises(ValueError, match="part 'holdout'"):
        restrict_cohort(cohort, RowSelection.parse(str(split_file), "holdout"))
