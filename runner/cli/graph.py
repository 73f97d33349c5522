"""`runner graph PIPELINE_OR_JOB`: the DAG as text, Mermaid or Graphviz dot."""

from __future__ import annotations
