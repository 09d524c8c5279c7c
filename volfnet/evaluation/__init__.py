"""volfnet.evaluation"""
