"""DVT: Dynamic Vision Transformers (Wang et al., NeurIPS 2021) as a reproducible workflow."""

__version__ = "0.1.0"
