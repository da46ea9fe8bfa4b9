"""Figures of background models, selections and validation, and the HTML report.
"""
