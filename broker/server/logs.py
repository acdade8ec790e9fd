"""Structured JSON logs, one object per line on stderr.

Events carry identifiers only (cluster, namespace, pod, role, credential name, lease id,
request id, error reason; with tracing on, the trace id of the span they were written in);
no code passes a credential value or a token to a logger.

structlog renders each event and hands the line to the standard logging, whose one handler
writes stderr: one lock guards the stream. (A structlog PrintLogger on the same stream has a
lock of its own, not reentrant; with two locks on one stream, a log call made while one is
held, as a finalizer the garbage collector runs inside a write does, can wait for the other
forever: tests/security hung that way at 17ddd38.)
"""

from __future__ import annotations

import logging
import sys

import structlog

from broker import tracing


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            tracing.add_trace_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
