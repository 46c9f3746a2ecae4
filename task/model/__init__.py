"""task/model"""
