"""volfnet.data"""
