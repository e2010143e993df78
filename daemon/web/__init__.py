"""tracecanary.daemon.web"""
