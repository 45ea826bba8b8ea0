"""End to end: the chart's agent (image or venv) behind containerd's CRI plugin (`make e2e`)."""
