"""SQS endpoint fixture (moto's server). Owned by the SQS work."""
