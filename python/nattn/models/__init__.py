"""Models built on neighborhood attention."""
from .nat import (
    NAT,
    dinat_base,
    dinat_mini,
    dinat_small,
    dinat_tiny,
    nat_base,
    nat_mini,
    nat_small,
    nat_tiny,
    neighborhood_mask_mod,
)

__all__ = ["NAT", "nat_mini", "nat_tiny", "nat_small", "nat_base", "dinat_mini", "dinat_tiny",
           "dinat_small", "dinat_base", "neighborhood_mask_mod"]
