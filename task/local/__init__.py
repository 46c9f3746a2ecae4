"""task/local"""
