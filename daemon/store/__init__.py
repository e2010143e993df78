"""tracecanary.daemon.store"""
