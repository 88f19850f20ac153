"""Prompt optimization: evaluators that score one extraction against its label, and the DSPy bridge.

``dspydantic.optimize.evaluators`` holds the evaluator classes and their registry;
``dspydantic.optimize.scoring`` compares a whole extraction with its label field by field.
"""
