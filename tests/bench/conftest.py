# The benchmark harness is not a test suite: pytest must never collect anything here.
collect_ignore_glob = ["*"]
