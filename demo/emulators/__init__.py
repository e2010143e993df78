"""tracecanary.demo.emulators"""
