"""tracecanary.demo"""
