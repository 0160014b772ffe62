"""serwild.trainer"""
