"""The `swarm` command: every subcommand (cli.py) and the readiness checks of a machine, a
journal and a Ray cluster (doctor.py). It serves every package, so it lives above them all."""
