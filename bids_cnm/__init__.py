"""bids_cnm: coordinate network mapping as a BIDS App."""

__version__ = "0.1.0"
__all__ = ["__version__"]
