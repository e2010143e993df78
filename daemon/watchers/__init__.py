"""tracecanary.daemon.watchers"""
