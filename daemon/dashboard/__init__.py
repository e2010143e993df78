"""tracecanary.daemon.dashboard"""
