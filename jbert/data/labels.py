"""The label convention shared by the data streams and the losses: positions without a target."""

# Labels at unmasked positions, padding and special tokens; the losses skip them (torch's default).
IGNORE_INDEX = -100
