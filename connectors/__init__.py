"""I/O edges of streamadapt: Kafka sources and sinks, file replay, the embedded broker, and
the command line that wires them to the core. The core (:mod:`streamadapt`) never imports
this package."""
