"""Code that runs inside vLLM's worker process (the EngineCore's own process on the CPU build): the model, the
span grammar and its adapter for each of vLLM's model runners, guidance's pairing of rows. Imported by vLLM, not by
the server."""
