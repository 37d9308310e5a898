"""Integrations with distributed-training back ends (DeepSpeed) and memory arithmetic."""
