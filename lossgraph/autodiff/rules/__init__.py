"""Gradient rules, one module per op family; importing a module registers its rules."""
