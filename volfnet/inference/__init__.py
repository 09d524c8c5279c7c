"""volfnet.inference"""
