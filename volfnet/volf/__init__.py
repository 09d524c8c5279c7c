"""volfnet.volf"""
