"""tracecanary.daemon.alerts"""
