"""tracecanary.daemon.web.dashboard"""
