"""Test support: a deterministic fake OpenAI-compatible server."""

from deepstep.testing.fake_llm import FakeLLMServer, Fault, parse_fault

__all__ = ["FakeLLMServer", "Fault", "parse_fault"]
