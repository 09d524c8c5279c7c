"""volfnet.training"""
