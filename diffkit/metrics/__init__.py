"""diffkit.metrics"""
