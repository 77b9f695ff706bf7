"""The shared training stack: config schema and CLI, optimiser, state, step, checkpoints, logging,
the loop.
"""
