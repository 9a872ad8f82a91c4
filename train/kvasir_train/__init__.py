"""Retrofit training for Kvasir's KV-compression methods (docs/retrofit.md)."""

# The projections a LoRA adapter may correct, by their GGUF tensor names (without ".weight").
PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
