"""Typed config sections of the training and inference stages (registered into the schema of ``config.py``).

Every default is the paper profile's value (paper Table 8, appendix A.1, the official code); the tiny CPU recipe is
``conf/profile/tiny.yaml`` and nowhere else. A section shared by several stages gets its per-stage paper values
through ``default_factory``."""

# imported for their register_section calls, in the order of the merged config's sections
from videolavit.schemas import sections  # noqa: F401, I001
from videolavit.schemas import detokenizer  # noqa: F401
