"""ae-pipeline: autoencoders for Apache Beam.

Train autoencoders on historical Parquet data as Beam batch jobs, and serve them in streaming
Beam jobs that read records from Kafka and encode them, denoise them, or flag them as anomalous.
"""

__version__ = "0.1.0"
