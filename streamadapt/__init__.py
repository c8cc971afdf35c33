"""streamadapt: online streaming adaptation of machine-learning models.

The core package is pure: it never imports Kafka or any other I/O client. The I/O edges
(Kafka, file replay, the embedded broker) and the command line live in :mod:`connectors`.
"""

__version__ = "0.1.0"
