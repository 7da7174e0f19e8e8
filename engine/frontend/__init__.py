"""Code that runs in the API server's process, beside vLLM's AsyncLLM: the engine client, the VQGAN and its
batching, image input and output, the splitter of replies into text and images."""
