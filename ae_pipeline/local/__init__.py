"""Local infrastructure for tests, the demo and development: a real Kafka broker and the Beam
runners (FnApiRunner, Prism, Flink) set up by ``deploy/local/bootstrap.sh``.

Nothing here is needed in production; it never imports model or Beam-transform code.
"""
