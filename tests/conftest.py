"""Shared fixtures: tiny random checkpoints in the real layouts (built offline with transformers)."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("EPATH_USE_TF", "false")  # gs:// through gcsfs (fake-gcs-server in tests), never TF
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

import reference  # noqa: E402

pytest_plugins = ["gcs_server"]  # the `gcs` / `gcs_dir` fixtures: a fake GCS server on 127.0.0.1


@pytest.fixture(scope="session", params=["relu", "gated-gelu"])
def instructor_dir(request, tmp_path_factory):
  """A tiny random INSTRUCTOR-layout checkpoint (relu and gated-gelu)."""
  out = tmp_path_factory.mktemp(f"instructor-{request.param}")
  return reference.make_checkpoint(str(out), request.param, layout="instructor")


@pytest.fixture(scope="session")
def relu_dir(tmp_path_factory):
  return reference.make_checkpoint(str(tmp_path_factory.mktemp("relu")), "relu", layout="instructor")
