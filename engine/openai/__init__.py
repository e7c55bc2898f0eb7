"""Any OpenAI-compatible server (vLLM, SGLang, llama.cpp, a Parrot gateway) as a Parrot engine."""
