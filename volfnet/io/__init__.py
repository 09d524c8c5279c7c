"""volfnet.io"""
