"""What the tests and the benchmark share: a RabbitMQ vhost of their own, a free port.

Not part of the installed packages; both import it from the repository root
(pytest puts the root on the path, ``python -m bench`` runs from it).
"""
