"""Clarion: a Kubernetes-native WebSocket push gateway."""

__version__ = "0.1.0"
