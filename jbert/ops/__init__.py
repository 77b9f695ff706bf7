"""Kernels of the model: symmetric ALiBi, the attention paths behind one function, masks, and the
logical-axis sharding table.
"""
