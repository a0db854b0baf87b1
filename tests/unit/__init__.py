"""Unit tests: one file per module of the service (``tests/unit/test_<module>.py``), each
driving the real module on a real event loop (and a real uvicorn on loopback where a
transport needs a server). None needs RabbitMQ or any network beyond loopback, so
``pytest tests/unit`` runs anywhere in seconds."""
