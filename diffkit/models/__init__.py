"""diffkit.models"""
