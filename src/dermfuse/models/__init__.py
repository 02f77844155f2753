"""Models, chosen by name (timm style): ``create_model(name, ...)`` builds any registered
model, ``list_models()`` lists them; the registry itself is in `dermfuse.models.registry`.
Importing this package imports every builder, so that each registers itself."""

from .registry import ModelSpec, Normalize, create_model, list_models, model_spec, register_model
from .weights import LoadReport, load_weights, read_state_dict
from .backbones import load_lite0_imagenet, load_lite_imagenet
from .cnn import ConvBlocks
from . import fusion  # noqa: F401  (registers ft_multicnn)

__all__ = ["ModelSpec", "Normalize", "register_model", "create_model", "list_models", "model_spec",
           "LoadReport", "load_weights", "read_state_dict", "load_lite0_imagenet", "load_lite_imagenet",
           "ConvBlocks"]
