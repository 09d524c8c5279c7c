"""volfnet.preprocessing"""
