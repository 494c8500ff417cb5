"""flowdpo: train LLM flows with online DPO (Flow-DPO)."""

__version__ = "0.1.0"
