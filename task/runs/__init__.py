"""task/runs"""
