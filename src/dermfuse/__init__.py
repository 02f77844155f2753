"""dermfuse: multimodal skin-lesion classifiers (dermoscopic image + patient metadata)
with activation heatmaps. Research use only; not a diagnostic device."""

__version__ = "0.2.0"

HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
"""The seven HAM10000 diagnoses, in the order every model's logits use."""

CLASS_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

__all__ = ["__version__", "HAM10000_CLASSES", "CLASS_NAMES"]
