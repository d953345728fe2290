"""The leaf layer: what every package of the swarm may import, and which imports none of them.

  stats.py    the statistics: noise floor, Student's t, the sequential test that judges a candidate
  target.py   the target contract: target.toml, its commands, the fingerprint a target prints
  paths.py    the path policy: which files a change may touch (editable, fixed, escapes, links)
  keys.py     when two hypotheses are the same idea (params or normalised title)
  proc.py     one process-tree kill (a trial or an agent command never outlives its call)
"""
