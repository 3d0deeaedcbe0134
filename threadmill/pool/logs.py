"""Log output of the pool: text as configured, or one JSON object per line.

A worker process writes its log lines in batches (`buffer_stream_handlers`): one write per
tick of its main loop, not one per task end, and at once for warnings and errors.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record was passed in `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, and its extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(log_format: str) -> None:
    """Make sure the pool's logs are seen, in the chosen format.

    The project's LOGGING setting wins for where records go; without a handler for
    `threadmill` we add one on stderr at INFO, so the one line per task is always shown.
    """
    logger = logging.getLogger("threadmill")
    if not _has_handler(logger):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s %(process)d %(name)s: %(message)s")
        )
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    if log_format == "json":
        formatter = JsonFormatter()
        for handler in _handlers(logger):
            handler.setFormatter(formatter)


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found


def _has_handler(logger: logging.Logger) -> bool:
    return bool(_handlers(logger))


class BufferedStreamHandler(logging.StreamHandler):
    """A StreamHandler that collects lines and writes them when flushed.

    Records at WARNING and above are written at once, with whatever waited before them, so
    the order of lines is kept. The owner calls `flush()` on a timer; `logging.shutdown()`
    calls it at exit.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # an RLock: `emit` already holds it when it flushes
            if not self.pending:
                return
            text, self.pending = "".join(self.pending), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                pass  # like StreamHandler, never let a broken stream stop the pool


# The handlers `buffer_stream_handlers` put in place, by the handler each replaced.
_buffered: dict[logging.Handler, BufferedStreamHandler] = {}


def buffer_stream_handlers() -> None:
    """Make the plain stream handlers of the pool's logs collect lines; flush them on a timer.

    Only handlers of exactly `logging.StreamHandler` (the one `configure` adds, or a console
    handler from LOGGING) are replaced, keeping their level, formatter and filters; any other
    handler is left as configured.
    """
    current: logging.Logger | None = logging.getLogger("threadmill")
    while current is not None:
        for index, handler in enumerate(current.handlers):
            if type(handler) is logging.StreamHandler:
                buffered = _buffered.get(handler)
                if buffered is None:  # the same handler on two loggers: one replacement
                    buffered = _buffered[handler] = BufferedStreamHandler(handler.stream)
                    buffered.setLevel(handler.level)
                    buffered.setFormatter(handler.formatter)
                    buffered.filters = list(handler.filters)
                current.handlers[index] = buffered
        current = current.parent if current.propagate else None


def flush_buffered() -> None:
    """Write out every line the buffered handlers hold."""
    for handler in _buffered.values():
        handler.flush()
