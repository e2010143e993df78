"""tracecanary.daemon.observe"""
