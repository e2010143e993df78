"""tracecanary.demo.shop"""
