"""tracecanary.daemon.run"""
