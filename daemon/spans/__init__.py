"""tracecanary.daemon.spans"""
