"""volfnet.networks"""
