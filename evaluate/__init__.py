"""serwild.evaluate"""
