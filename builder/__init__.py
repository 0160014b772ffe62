"""serwild.builder"""
