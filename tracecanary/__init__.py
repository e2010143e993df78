"""tracecanary: always-on synthetic monitoring for asynchronous systems."""

__version__ = "0.1.0"
