"""runner: run LLM pipelines as DAGs on trio, with a typed event log, resume and a cache.

The public API::

    import runner, trio

    pipeline = runner.load_pipeline("examples/app_builder.toml")
    result = trio.run(runner.run_dag, pipeline)
    print(result.status, result.run_dir)
"""

from ._version import __version__ as __version__
from .config import Settings as Settings
from .errors import CircuitOpenError as CircuitOpenError
from .errors import ConfigError as ConfigError
from .errors import JobError as JobError
from .errors import MalformedResponseError as MalformedResponseError
from .errors import PathEscapeError as PathEscapeError
from .errors import PermanentProviderError as PermanentProviderError
from .errors import PipelineError as PipelineError
from .errors import ProviderConnectionError as ProviderConnectionError
from .errors import ProviderError as ProviderError
from .errors import ProviderStreamError as ProviderStreamError
from .errors import ProviderTimeoutError as ProviderTimeoutError
from .errors import RateLimitError as RateLimitError
from .errors import RetryableProviderError as RetryableProviderError
from .errors import RunnerError as RunnerError
from .errors import StorageError as StorageError
from .event_writer import EventEmitter as EventEmitter
from .events import Event as Event
from .events import read_events as read_events
from .filestore import safe_write as safe_write
from .job_options import JobOptions as JobOptions
from .jobs import Job as Job
from .jobs import open_job as open_job
from .jobs import read_completed_steps as read_completed_steps
from .jobs import run_dag as run_dag
from .pipeline import InputSpec as InputSpec
from .pipeline import Pipeline as Pipeline
from .pipeline import Step as Step
from .pipeline_files import load_pipeline as load_pipeline
from .step import StepContext as StepContext
from .supervisor import JobResult as JobResult

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "Event",
    "EventEmitter",
    "InputSpec",
    "Job",
    "JobError",
    "JobOptions",
    "JobResult",
    "MalformedResponseError",
    "PathEscapeError",
    "PermanentProviderError",
    "Pipeline",
    "PipelineError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStreamError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RetryableProviderError",
    "RunnerError",
    "Settings",
    "Step",
    "StepContext",
    "StorageError",
    "__version__",
    "load_pipeline",
    "open_job",
    "read_completed_steps",
    "read_events",
    "run_dag",
    "safe_write",
]
