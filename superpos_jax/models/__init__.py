"""Model families: toy autoencoders (`toy`, `correlated`), sparse autoencoders (`sae`) and a
tiny transformer with hooks (`transformer`)."""

from superpos_jax.models import correlated as correlated
from superpos_jax.models import sae as sae
from superpos_jax.models import toy as toy
from superpos_jax.models import transformer as transformer

__all__ = ["correlated", "sae", "toy", "transformer"]
