"""`dermfuse demo` end to end, shrunk: tiny images, one epoch, small models."""

from __future__ import annotations

from dermfuse.runs.demo import DEMO_MODELS, DemoModel, demo_config, run_demo

_SMALL = {"data.image_size": 32, "train.epochs": 1, "cam.backbone": "cnn", "cam.epochs": 1}


def test_demo_report_has_the_papers_figures_and_prints_cleaning_once(tmp_path, capsys):
    models = (DemoModel("cnn", "plain CNN", {"model.name": "cnn", **_SMALL}),
              DemoModel("hm", "FT-MultiCNN on heatmaps", {"model.name": "ft_multicnn", "model.input": "heatmap", **_SMALL}))
    path = run_demo(tmp_path / "demo", n=100, epochs=1, models=models)
    page = path.read_text()
    for text in ("SYNTHETIC", "say nothing about real lesions", "images per class after cleaning",
                 "paper Fig. 4", "paper Fig. 8", "paper Fig. 6", "duplicate row", "FT-MultiCNN on heatmaps"):
        assert text in page, text
    assert page.count("data:image/png;base64") >= 5  # distribution, comparison, triptych, 2 x curves/confusion
    assert capsys.readouterr().err.count("Cleaning:") == 1


def test_demo_models_include_the_papers_configuration(tmp_path):
    heat = [m for m in DEMO_MODELS if m.overrides.get("model.input") == "heatmap"]
    assert heat and heat[0].overrides["model.name"] == "ft_multicnn"
    cfg = demo_config(tmp_path / "data", tmp_path / "out", heat[0], epochs=3)
    assert (cfg.model.name, cfg.model.input, cfg.train.epochs, cfg.data.image_size) == ("ft_multicnn", "heatmap", 3, 128)
    assert cfg.out == str(tmp_path / "out" / heat[0].key)
