"""After training: turn a model directory into what a serving stack loads (GGUF, Ollama, ...)."""
