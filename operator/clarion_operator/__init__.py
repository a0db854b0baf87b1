"""The Clarion operator (kopf): deploys WebSocketGateways, scales them, sweeps dead pods' queues.

Importing the package registers the handlers with kopf, so both
``clarion-operator`` and ``kopf run -m clarion_operator`` find them.
"""

from . import handlers as handlers
