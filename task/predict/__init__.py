"""task/predict"""
