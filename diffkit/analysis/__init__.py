"""diffkit.analysis"""
