"""Where rollouts keep state across processes: plans and controller state, the leader lock.

The I/O half of `rollout/`: memory, file and Redis backends behind small Protocols. The
statistics and decisions in the package above take values and return values.
"""
