"""volfnet.cli"""
