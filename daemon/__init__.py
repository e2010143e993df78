"""tracecanary.daemon"""
