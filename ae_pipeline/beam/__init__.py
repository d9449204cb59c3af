"""Beam transforms: Parquet training, scoring DoFns and Kafka I/O (the only layer that imports
apache_beam besides the artifact/registry file access)."""
