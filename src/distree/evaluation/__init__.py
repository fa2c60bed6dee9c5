"""Offline evaluation of trained runs."""
