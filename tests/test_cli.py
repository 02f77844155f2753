"""The CLI: bad input gives a clear message and a non-zero exit code, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dermfuse.cli import main


@pytest.fixture(scope="module")
def bundle(synth_small, tmp_path_factory):
    from dermfuse.config import RunConfig
    from dermfuse.runs.holdout import train_run

    cfg = RunConfig()
    cfg.data.path, cfg.data.image_size = str(synth_small), 32
    cfg.model.name, cfg.model.pretrained = "ft_multicnn", False
    cfg.train.epochs, cfg.out = 1, str(tmp_path_factory.mktemp("cli") / "run")
    return train_run(cfg, progress=False).bundle


@pytest.fixture
def image(synth_small):
    return str(next((synth_small / "images").glob("*.jpg")))


def _run(args, capsys):
    code = main(["-q", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_predict_json(bundle, image, capsys):
    code, out, _ = _run(["predict", str(bundle), image, "--age", "50", "--sex", "male", "--site", "back", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert abs(sum(d["probabilities"].values()) - 1) < 1e-5 and d["top_class"] in d["probabilities"]


@pytest.mark.parametrize("args,needle", [
    (["--age", "-3", "--sex", "male", "--site", "back"], "-3"),
    (["--age", "abc", "--sex", "male", "--site", "back"], "abc"),
    (["--age", "50", "--sex", "male", "--site", "moon"], "moon"),
    (["--age", "50", "--sex", "robot", "--site", "back"], "robot"),
])
def test_predict_bad_metadata(bundle, image, capsys, args, needle):
    code, _, err = _run(["predict", str(bundle), image, *args], capsys)
    assert code != 0 and needle in err and "Traceback" not in err


def test_predict_corrupt_image(bundle, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = _run(["predict", str(bundle), str(bad), "--age", "50", "--sex", "male", "--site", "back"], capsys)
    assert code != 0 and "bad.jpg" in err and "Traceback" not in err


def test_predict_missing_bundle_subprocess(tmp_path, image):
    r = subprocess.run([sys.executable, "-m", "dermfuse", "predict", str(tmp_path / "nobundle"), image,
                        "--age", "50", "--sex", "male", "--site", "back"], capture_output=True, text=True)
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_data_check_json(synth_small, capsys):
    code, out, _ = _run(["data", "check", str(synth_small), "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and d["format"] == "ham10000"
    for k in ("images", "lesions", "patients", "classes", "missing", "dropped"):
        assert k in d
    assert sum(d["after_cleaning"]["classes"].values()) == d["after_cleaning"]["images"]
    # a duplicate row repeats an image_id, so it is not an extra image
    dropped_images = sum(d["dropped"].values()) - d["dropped"]["duplicate_row"]
    assert d["images"] - d["after_cleaning"]["images"] == dropped_images


def test_data_check_wrong_columns(tmp_path, capsys):
    (tmp_path / "metadata.csv").write_text("foo,bar\n1,2\n")
    code, _, err = _run(["data", "check", str(tmp_path)], capsys)
    assert code != 0 and "foo" in err and "Traceback" not in err


def test_data_plot(synth_small, tmp_path, capsys):
    code, _, _ = _run(["data", "plot", str(synth_small), "--out", str(tmp_path / "c.png")], capsys)
    assert code == 0 and (tmp_path / "c.png").stat().st_size > 1000


def test_cam_command(bundle, image, tmp_path, capsys):
    code, _, _ = _run(["cam", str(bundle), image, "--out", str(tmp_path / "cams")], capsys)
    assert code == 0 and len(list((tmp_path / "cams").glob("*.png"))) == 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    code, _, err = _run(["cam", str(bundle), str(bad), "--out", str(tmp_path / "cams")], capsys)
    assert code != 0 and "bad.png" in err


def test_cam_on_bundle_without_cam_backbone(tmp_path, image, capsys):
    """A metadata-only bundle has neither a CAM backbone nor an image branch to explain."""
    import pandas as pd

    from dermfuse.inference.bundle import save_bundle
    from dermfuse.data.encode import MetadataEncoder
    from dermfuse.models import create_model

    enc = MetadataEncoder().fit(pd.DataFrame({"age": [40.0, 60.0], "sex": ["male", "female"], "site": ["back", "face"]}))
    kw = {"num_classes": 7, "meta_dim": enc.n_features}
    path = save_bundle(tmp_path / "meta", model=create_model("meta_mlp", pretrained=False, **kw), model_name="meta_mlp",
                       model_kwargs=kw, classes=["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"], encoder=enc, image_size=32)
    code, _, err = _run(["cam", str(path), image, "--out", str(tmp_path / "cams")], capsys)
    assert code != 0 and "no CAM backbone" in err and "Traceback" not in err


def test_evaluate_split_file_and_calibrate(bundle, synth_small, capsys):
    """`evaluate --split-file RUN/split.csv --json` scores the held-out rows only;
    `calibrate RUN` then changes what the same command reports, as the bundle now says."""
    import pandas as pd

    run = bundle.parent
    split = run / "split.csv"
    n_test = int((pd.read_csv(split)["part"] == "test").sum())
    code, out, _ = _run(["evaluate", str(bundle), str(synth_small), "--json", "--split-file", str(split)], capsys)
    assert code == 0
    before = json.loads(out)
    assert before["n_images"] == n_test and "part 'test'" in before["rows"]
    code, _, err = _run(["calibrate", str(run), "--mode", "temperature"], capsys)
    assert code == 0 and "temperature" in err
    code, out, _ = _run(["evaluate", str(bundle), str(synth_small), "--json", "--split-file", str(split)], capsys)
    after = json.loads(out)
    assert after["accuracy"] == before["accuracy"]  # temperature alone never moves a decision
    assert after["log_loss"] != pytest.approx(before["log_loss"], abs=1e-9)
    reported = json.loads((run / "metrics.json").read_text())
    assert after["log_loss"] == pytest.approx(reported["log_loss"], abs=1e-4)
    code, _, err = _run(["evaluate", str(bundle), str(synth_small), "--split-file", str(split), "--part", "nope"],
                        capsys)
    assert code == 2 and "no rows in part 'nope'" in err


@pytest.fixture(scope="module")
def generic_copy(synth_small, tmp_path_factory):
    """synth_small as a 'generic' data set: the same rows under other column names."""
    import shutil

    import pandas as pd

    root = tmp_path_factory.mktemp("generic")
    shutil.copytree(synth_small / "images", root / "pics")
    meta = pd.read_csv(synth_small / "metadata.csv").rename(columns={
        "image_id": "file", "dx": "diagnosis", "lesion_id": "lesion", "age": "years",
        "sex": "gender", "localization": "body_part"})
    meta.to_csv(root / "labels.csv", index=False)
    return root


GENERIC_MAP = "image_id=file, label=diagnosis,lesion_id=lesion,age=years,sex=gender,site=body_part"


def test_column_map_reads_a_generic_csv_like_its_own_format(synth_small, generic_copy, capsys):
    code, out, _ = _run(["data", "check", str(synth_small), "--json"], capsys)
    ham = json.loads(out)
    code, out, err = _run(["data", "check", str(generic_copy), "--column-map", GENERIC_MAP, "--json"], capsys)
    assert code == 0, err
    generic = json.loads(out)
    assert generic["format"] == "generic"
    for key in ("images", "lesions", "after_cleaning", "missing"):
        assert generic[key] == ham[key], key


def test_train_and_evaluate_with_column_map(synth_small, generic_copy, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _run(["train", str(generic_copy), "--model", "cnn", "--column-map", GENERIC_MAP,
                         "--epochs", "1", "--image-size", "32", "--no-pretrained", "--out", str(run)], capsys)
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["column_map"]["label"] == "diagnosis" and saved["column_map"]["image_id"] == "file"
    n_test = json.loads((run / "metrics.json").read_text())["n_images"]
    code, out, err = _run(["evaluate", str(run / "bundle"), str(generic_copy), "--column-map", GENERIC_MAP,
                           "--split-file", str(run / "split.csv"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_images"] == n_test > 0
    # the bundle records the map, so evaluate reads the same CSV without being told again
    info = json.loads((run / "bundle" / "bundle.json").read_text())
    assert info["training_data"]["column_map"]["label"] == "diagnosis"
    code, out, err = _run(["evaluate", str(run / "bundle"), str(generic_copy),
                           "--split-file", str(run / "split.csv"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_images"] == n_test
    # a map on the command line wins over the recorded one (this one names a missing column)
    code, _, err = _run(["evaluate", str(run / "bundle"), str(generic_copy), "--column-map",
                         GENERIC_MAP.replace("label=diagnosis", "label=dx_missing")], capsys)
    assert code != 0 and "dx_missing" in err and "Traceback" not in err
    # data in a known layout is read as that layout, not with the recorded map
    code, out, err = _run(["evaluate", str(run / "bundle"), str(synth_small),
                           "--split-file", str(run / "split.csv"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_images"] == n_test
    # a bundle without a map (or data no map fits) still fails with what each format needs
    info["training_data"]["column_map"] = None
    (run / "bundle" / "bundle.json").write_text(json.dumps(info))
    code, _, err = _run(["evaluate", str(run / "bundle"), str(generic_copy)], capsys)
    assert code != 0 and "diagnosis" in err and "generic needs" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["image_id", "image_id=file,label", "=file", ","])
def test_bad_column_map_is_a_usage_error(text, synth_small, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(synth_small), "--column-map", text])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--column-map" in err and "NAME=COLUMN" in err


def test_column_map_with_another_format_is_refused(synth_small, capsys):
    code, _, err = _run(["data", "check", str(synth_small), "--format", "ham10000",
                         "--column-map", "image_id=image_id,label=dx"], capsys)
    assert code != 0 and "applies to format 'generic' only" in err and "Traceback" not in err


def test_train_member_jobs_then_build_the_ensemble(synth_small, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", str(synth_small), "--model", "cnn", "--epochs", "1", "--image-size", "32",
            "--no-pretrained", "--out", str(run), "--members", "2"]
    code, _, err = _run([*base, "--member", "2"], capsys)
    assert code != 0 and "member 2" in err and "0 to 1" in err and "Traceback" not in err
    for k in (0, 1):
        code, _, err = _run([*base, "--member", str(k)], capsys)
        assert code == 0, err
        assert f"member {k} (seed {k}) of 2" in err and "--resume" in err
    assert not (run / "bundle").exists()
    code, _, err = _run([*base, "--resume"], capsys)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["member"] for m in metrics["members"]] == [0, 1]
    assert json.loads((run / "bundle" / "bundle.json").read_text())["model"]["kwargs"]["n_members"] == 2


# --- trust: release, card, batch predict, bundle forms ------------------------------------


@pytest.fixture(scope="module")
def released(bundle, tmp_path_factory, synth_small):
    out = tmp_path_factory.mktemp("rel") / "bundle"
    # the holdout run's own trust part first, so the card reports its thresholds on the test rows
    assert main(["-q", "release", str(bundle.parent), "--out", str(bundle.parent / "released"),
                 "--data", str(synth_small)]) == 0
    code = main(["-q", "release", str(bundle.parent), "--out", str(out), "--holdout", str(bundle.parent),
                 "--data", str(synth_small), "--json"])
    assert code == 0
    return out


def test_release_writes_trust_and_card_and_keeps_the_weights(released, bundle, capsys):
    from dermfuse.inference.bundle import load_bundle

    capsys.readouterr()
    b, orig = load_bundle(released), load_bundle(bundle)
    assert b.model_id == orig.model_id and (released / "trust.safetensors").is_file()
    t = b.trust
    assert t.selective.achieved >= 0.9 and t.melanoma.sensitivity >= 0.85 and t.ood.keep == 0.95
    assert t.fitted_on["val_rows"] > 0 and "no test rows" in t.fitted_on["note"]
    card = b.info["model_card"]
    assert card["license"]["weights"].startswith("CC BY-NC 4.0") and card["license"]["code"] == "Apache-2.0"
    hold = card["performance"]["holdout"]
    acc = hold["overall"]["accuracy"]
    assert acc["low"] <= acc["value"] <= acc["high"] and set(hold["per_class"]) == set(b.classes)
    assert {"sex", "age_band", "site"} <= set(hold["subgroups"])
    auc = hold["overall"]["macro_auc"]
    assert auc["low"] <= auc["value"] <= auc["high"]
    ops = hold["operating_points"]
    assert ops["selective"]["threshold"] == load_bundle(bundle.parent / "released").trust.selective.threshold
    assert 0 < ops["selective"]["coverage"]["value"] <= 1 and "validation rows" in ops["fitted_on"]


def test_card_renders_text_and_json(released, capsys):
    code, out, _ = _run(["card", "--bundle", str(released)], capsys)
    assert code == 0 and "Intended use" in out and "CC BY-NC 4.0" in out and "Must not be used for" in out
    assert "macro_auc" in out and "answered (top probability >=" in out
    code, out, _ = _run(["card", "--bundle", str(released), "--json"], capsys)
    assert json.loads(out)["schema"].startswith("dermfuse-model-card")


def test_predict_with_trust_json_and_forms(released, image, capsys):
    code, out, _ = _run(["predict", "--bundle", str(released), image, "--age", "50", "--json",
                         "--operating-point", "melanoma"], capsys)
    d = json.loads(out)
    assert code == 0 and d["status"] in ("ok", "uncertain", "out_of_distribution")
    assert d["operating_point"] == "melanoma" and d["model_id"]
    code, out2, _ = _run(["predict", str(released), image, "--age", "50", "--json", "--operating-point", "melanoma"],
                         capsys)
    assert json.loads(out2)["probabilities"] == d["probabilities"]
    code, _, err = _run(["predict", "--bundle", str(released), str(released), image], capsys)
    assert code == 2 and "with --bundle" in err


def test_predict_folder_and_csv_to_a_predictions_csv(released, synth_small, tmp_path, capsys):
    import shutil

    import pandas as pd

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((synth_small / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    code, _, _ = _run(["predict", "--bundle", str(released), str(folder), "--out", str(tmp_path / "a.csv")], capsys)
    a = pd.read_csv(tmp_path / "a.csv")
    assert code == 0 and len(a) == 3 and {"status", "top_class", "p_mel"} <= set(a.columns)
    names = sorted(p.name for p in folder.iterdir())
    pd.DataFrame({"image": names, "age": ["40", "", "70"], "sex": ["male", "", "female"]}).to_csv(folder / "in.csv",
                                                                                                index=False)
    code, out, _ = _run(["predict", "--bundle", str(released), str(folder / "in.csv")], capsys)
    b = pd.read_csv(__import__("io").StringIO(out))
    assert code == 0 and len(b) == 3


def test_predict_many_answers_the_good_rows_and_marks_the_bad_ones(released, synth_small, tmp_path, capsys):
    """A bad row (missing image, bad age) does not stop the others: status error, the message
    names the row, exit 1; --json is strict JSON (null, not NaN) and --out still gets the CSV."""
    import pandas as pd

    good = sorted((synth_small / "images").glob("*.jpg"))[:2]
    (tmp_path / "text.jpg").write_text("not an image")
    pd.DataFrame({"image": [str(good[0]), "nope.jpg", str(good[1]), "text.jpg"],
                  "age": ["40", "50", "-5", ""]}).to_csv(tmp_path / "in.csv", index=False)
    code, out, err = _run(["predict", "--bundle", str(released), str(tmp_path / "in.csv"), "--json",
                           "--out", str(tmp_path / "p.csv")], capsys)
    assert code == 1
    rows = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))["predictions"]
    assert [r["status"] == "error" for r in rows] == [False, True, True, True]
    assert rows[0]["top_class"] in _released_classes(released) and rows[0]["error"] is None
    assert rows[1]["top_class"] is None and rows[1]["p_mel"] is None
    assert rows[1]["error"].startswith("row 2 (") and "nope.jpg" in rows[1]["error"]
    assert rows[2]["error"].startswith("row 3 (") and "age '-5'" in rows[2]["error"]
    assert rows[3]["error"].startswith("row 4 (") and "not a readable image" in rows[3]["error"]
    assert "skipped row 2" in err and "error 3" in err
    table = pd.read_csv(tmp_path / "p.csv")  # the same answers in the CSV
    assert table["status"].tolist() == [r["status"] for r in rows]
    assert table.loc[0, "p_mel"] == pytest.approx(rows[0]["p_mel"]) and table["p_mel"][1:].isna().all()
    (tmp_path / "empty.csv").write_text("image,age\n")
    code, _, err = _run(["predict", "--bundle", str(released), str(tmp_path / "empty.csv")], capsys)
    assert code == 2 and "no rows" in err


def _released_classes(bundle_dir) -> list[str]:
    return json.loads((Path(bundle_dir) / "bundle.json").read_text())["classes"]


def test_evaluate_reports_trust_and_writes_the_risk_coverage_plot(released, bundle, synth_small, tmp_path, capsys):
    code, out, _ = _run(["evaluate", "--bundle", str(released), str(synth_small), "--split-file",
                         str(bundle.parent / "split.csv"), "--json", "--out", str(tmp_path / "ev")], capsys)
    m = json.loads(out)
    assert code == 0 and 0 <= m["trust"]["selective"]["coverage"] <= 1
    assert "sensitivity" in m["trust"]["melanoma_operating_point"]
    assert (tmp_path / "ev" / "risk_coverage.png").stat().st_size > 0
    assert "risk-coverage" in (tmp_path / "ev" / "report.html").read_text()


def test_cam_explains_a_chosen_class(released, image, tmp_path, capsys):
    code, _, err = _run(["cam", str(released), image, "--out", str(tmp_path / "c"), "--explain", "mel"], capsys)
    assert code == 0 and len(list((tmp_path / "c").glob("*.png"))) == 1
    code, _, err = _run(["cam", str(released), image, "--out", str(tmp_path / "c"), "--explain", "zzz"], capsys)
    assert code == 2 and "zzz" in err


def test_no_bundle_and_no_released_model_is_a_clear_error(image, capsys, monkeypatch, tmp_path):
    import dermfuse.released as rel

    monkeypatch.setattr(rel, "RELEASED_BUNDLE", tmp_path / "none")
    code, _, err = _run(["predict", image], capsys)
    assert code == 2 and "--bundle" in err


def test_evaluate_at_the_melanoma_operating_point(released, synth_small, capsys):
    code, out, _ = _run(["evaluate", "--bundle", str(released), str(synth_small), "--operating-point", "melanoma",
                         "--json"], capsys)
    m = json.loads(out)
    assert code == 0 and m["operating_point"] == "melanoma"
    assert 0 <= m["at_operating_point"]["accuracy"] <= 1 and "auc_macro" not in m["at_operating_point"]


def test_cam_alpha_outside_0_1_is_a_usage_error(bundle, image, tmp_path, capsys):
    for alpha in ("5", "-1", "nan"):
        code, _, err = _run(["cam", str(bundle), image, "--out", str(tmp_path / "c"), "--alpha", alpha], capsys)
        assert code == 2 and f"--alpha {float(alpha)}" in err and "0..1" in err
    assert not (tmp_path / "c").exists()


def test_export_without_a_bundle_exports_the_released_model(bundle, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    import dermfuse.released as rel

    monkeypatch.setattr(rel, "RELEASED_BUNDLE", bundle)  # a tiny bundle stands in for the shipped one
    code, out, _ = _run(["export", "--out", str(tmp_path / "x"), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["model_id"] == json.loads((bundle / "bundle.json").read_text())["model_id"]
    monkeypatch.setattr(rel, "RELEASED_BUNDLE", tmp_path / "none")
    code, _, err = _run(["export", "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "--bundle" in err


def test_a_reader_that_leaves_early_gets_no_traceback(bundle, synth_small, tmp_path):
    """`dermfuse predict FOLDER | head -0`: stdout closed before the CSV is written."""
    import os

    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dermfuse", "-q", "predict", str(bundle), str(synth_small / "images")],
                          stdout=w, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    os.close(w)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr


def test_evaluate_says_how_many_rows_the_bundle_trained_on_from_any_folder(bundle, synth_small, tmp_path, capsys,
                                                                           caplog, monkeypatch):
    """The bundle lists its training and validation images (seen_images.txt); evaluate counts
    the scored rows among them and warns, whatever the current folder or the data's path."""
    import logging
    import shutil

    import pandas as pd

    split = pd.read_csv(bundle.parent / "split.csv")
    seen = set(split.loc[split["part"].isin(["train", "val"]), "image_id"])
    assert set((bundle / "seen_images.txt").read_text().split()) == seen
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(synth_small, copy)  # another path to the same images
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        code, out, _ = _run(["evaluate", str(bundle), str(copy), "--json"], capsys)
    m = json.loads(out)
    assert code == 0 and m["rows_seen_in_training"] == len(seen)
    assert f"{len(seen)} of the" in caplog.text and "optimistic" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code, out, _ = _run(["evaluate", str(bundle), str(copy), "--split-file", str(bundle.parent / "split.csv"),
                             "--part", "test", "--json"], capsys)
    assert code == 0 and json.loads(out)["rows_seen_in_training"] == 0 and "optimistic" not in caplog.text
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    (tampered / "seen_images.txt").write_text("ISIC_0000000\n")
    code, _, err = _run(["evaluate", str(tampered), str(copy)], capsys)
    assert code == 2 and "seen_images.txt" in err and "SHA-256" in err


def test_serve_answers_on_its_port_and_a_taken_port_is_a_clear_error(bundle, tmp_path):
    """The server binds before it says "serving"; a second one on the same port says the port
    is in use (exit 2) instead of announcing an address it cannot serve."""
    import os
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dermfuse", "serve", str(bundle), "--port", str(port)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline, health = time.time() + 120, None
        while time.time() < deadline and health is None and first.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert health is not None, first.stderr.read() if first.poll() is not None else "no answer"
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2 and "serving" not in second.stdout
        assert f"127.0.0.1:{port}" in second.stderr and "--port" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.terminate()
        first.wait(30)
