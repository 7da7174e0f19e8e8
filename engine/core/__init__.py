"""Code that runs in vLLM's engine-core process: its scheduler, with guidance companions. Imported by vLLM (the
``SchedulerConfig.scheduler_cls`` that ``engine/plugin.py`` names), not by the server."""
