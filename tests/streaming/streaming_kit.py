"""Former helpers of the streaming tests, now in the shared ``tests/kit`` package.

Kept only as an alias: ``tests/deploy/test_deploy_flink.py`` (owned elsewhere) imports
``streaming_kit`` by path. New code imports ``kit``.
"""

from kit import *  # noqa: F403
from kit import __all__  # noqa: F401
