"""tracecanary.daemon.cli.main"""
