"""Hostile inputs, faults and races (issue 12): one module per kind of defect."""
