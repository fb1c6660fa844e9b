"""stitchlib: model stitching and CKA, after Bansal, Nakkiran & Barak (NeurIPS 2021)."""

__version__ = "0.1.0"
