"""The ADR's ``ModelRetrainingSaga``: retrain a model when drift is detected (Kafka) and every
night (cron), streaming checkpoints from training to evaluation (see README.md; run
``python -m examples.model_retraining.main``)."""
