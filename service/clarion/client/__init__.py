"""``clarion.client``, kept importable: the client is the ``clarion-client`` distribution
(``clarion_client``, clients/python), which the server depends on. New code imports
``clarion_client``; this module only re-exports it (one copy of the code)."""

from clarion_client import *  # noqa: F403
from clarion_client import __all__ as __all__
from clarion_client import __version__ as __version__
