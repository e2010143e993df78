"""tracecanary.daemon.config.load"""
