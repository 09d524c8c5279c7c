"""volfnet.planning"""
