"""Facts that both processes read: the checkpoint families, their token layout and image spans, and the typed
options a request carries from the server to the worker."""
