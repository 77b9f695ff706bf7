"""Training tasks on the shared stack: masked-LM pretraining, contrastive tuning, hard-negative
mining, the demo pipeline.
"""
