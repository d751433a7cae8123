"""Model families: toy autoencoders (`toy`)."""

from superpos_jax.models import toy as toy

__all__ = ["toy"]
