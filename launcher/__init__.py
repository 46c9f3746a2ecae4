"""The launcher: Hydra composes conf/ presets with overrides into `flwr run` calls (one per job),
preflights each job, skips or resumes finished ones and summarises the sweep. It runs beside
Flower, never inside it: the apps are server_app/ and client_app/."""
