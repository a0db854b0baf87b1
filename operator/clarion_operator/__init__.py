"""The Clarion operator (kopf): deploys WebSocketGateways, scales them, sweeps dead pods' queues."""
