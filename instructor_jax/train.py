"""``python -m instructor_jax.train``: the training command (flags, then ``training/trainer.py``).

    python -m instructor_jax.train --config configs/demo.py --workdir /tmp/demo [--config.key=value ...]
    python -m instructor_jax.train --config configs/instructor_xl.py:v4-32 --workdir /tmp/x --compile_only

Rerunning the same command resumes from the newest intact checkpoint; after a complete run the model is evaluated
and exported (``training/finish.py``).
"""
from __future__ import annotations

import math
import os
import re
import sys

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from instructor_jax.core import cli, log
from instructor_jax.storage import checkpoints, paths
from instructor_jax.storage import workdir as workdir_lib
from instructor_jax.training import compile_cache
from instructor_jax.training import run_config
from instructor_jax.training.finish import finish
from instructor_jax.training.trainer import setup_distributed, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/NAME.py[:variant])",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, tensorboard, tokenizer")
flags.DEFINE_bool("compile_only", False, "AOT-compile the train step for config.mesh_shape on fake CPU devices and "
                  "report memory per device; no data, no weights")
flags.DEFINE_integer("compile_devices", 0, "device count for --compile_only (default: product of mesh_shape, "
                     "or config.compile_devices when mesh_shape has a -1)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (TPU pods, SLURM: auto-detected)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process setup)")
flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
flags.DEFINE_integer("process_id", None, "this process (with --coordinator_address)")
flags.DEFINE_bool("debug", False, "show the traceback of user errors (also INSTRUCTOR_JAX_DEBUG=1)")
flags.DEFINE_bool("print_config", False, "print the config's keys and values (defaults and overrides) and exit")
FLAGS = flags.FLAGS


def _config_spec(argv) -> str:
  """The ``--config`` value on the command line (``configs/x.py[:variant]``)."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  if not spec and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  return spec


def _parse_flags(argv):
  """absl's flag parsing, with a bad ``--config`` / ``--config.KEY`` as a one-line user error."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text, spec = cli.one_line(e), _config_spec(argv)
    if "get_config() takes 0 positional arguments" in text:  # configs/x.py:VARIANT on a config without variants
      raise run_config.ConfigError(f"--config {spec}: this config has no variants; drop ':{spec.split(':')[-1]}' "
                                   f"(configs/instructor_*.py take v4-32, v5e-64, gpu8)") from None
    found = re.findall(r"\b(\w+(?:Error|Exception)): (.*?)(?= File \"| \w+(?:Error|Exception): |$)", text)
    if spec and found:  # get_config raised: say what it said, not the traceback around it
      raise run_config.ConfigError(f"--config {spec}: {found[-1][1].strip()}") from None
    raise run_config.ConfigError(text) from None
  except OSError as e:  # --config FILE that cannot be read (ml_collections' message names the module, not FILE)
    raise run_config.ConfigError(f"--config {_config_spec(argv) or None}: cannot load the config file "
                                 f"({cli.one_line(e.__cause__ or e).splitlines()[0]})") from None
  except (AttributeError, KeyError) as e:  # --config.KEY=VALUE naming a key the config does not have
    key = str(e).strip("\"'")
    raise run_config.ConfigError(f"--config.{key}: no such config key (--print_config lists them)") from None


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  sys.exit(cli.run(lambda _: run(_config()), ["--debug"] if FLAGS.debug else []))


def _config() -> ml_collections.ConfigDict:
  """``--config``'s ConfigDict; a file that could not be loaded (ml_collections defers that error to the first
  read) is a one-line ``ConfigError``."""
  config = _CONFIG.value
  try:
    config.keys()
  except OSError as e:
    spec = FLAGS["config"].serialize().split("=", 1)[-1]
    path = spec.split(":", 1)[0]
    why = "no such file" if not os.path.isfile(path) else cli.one_line(e).split(" Attempted")[0]
    raise run_config.ConfigError(f"--config {spec}: cannot load the config file ({why})") from None
  return config


def print_config(config, prefix: str = "") -> None:
  """``--print_config``: every key as the override that sets it, ``--config.KEY=VALUE``."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      print_config(value, name + ".")
    elif isinstance(value, (tuple, list)):
      print(f"--config.{name}=({','.join(map(str, value))}{',' if len(value) == 1 else ''})")
    elif isinstance(value, bool):
      print(f"--config.{name}={str(value).lower()}")
    else:
      print(f"--config.{name}={value}")


def run(config) -> None:
  """The command: check the config, then compile only, or lock the workdir, train and finish."""
  if FLAGS.print_config:
    print_config(config)
    return
  run_config.validate(config)
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required")
  if not FLAGS.compile_only:
    workdir_lib.check_writable(FLAGS.workdir)  # before any step: a save would fail there otherwise
  if FLAGS.compile_only:
    # Must happen before the backend starts: fake CPU devices for the target mesh.
    n = FLAGS.compile_devices or int(config.compile_devices)
    if not n:
      if -1 in tuple(config.mesh_shape):
        raise app.UsageError("--compile_only with a -1 in mesh_shape needs --compile_devices N")
      n = math.prod(config.mesh_shape)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}").strip()
    jax.config.update("jax_platforms", "cpu")
  setup_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  folder = compile_cache.enable(config.compilation_cache_dir)  # before the first compile
  if jax.process_index() == 0:
    log.info(f"compilation cache: {folder or 'off'}")
  if FLAGS.compile_only:
    train(config, FLAGS.workdir, compile_only=True)
    return
  with workdir_lib.WorkdirLock(FLAGS.workdir, log=log.info):
    try:
      train(config, FLAGS.workdir)
    except (run_config.ConfigError, checkpoints.CheckpointError):
      raise  # rerunning as is would fail the same way
    except BaseException:
      step = checkpoints.latest_step(FLAGS.workdir)
      if step is not None:
        log.info(f"stopped; the newest checkpoint is {paths.join(paths.check(FLAGS.workdir), str(step))}. To resume: "
                 f"{workdir_lib.resume_command()}")
      raise
    finish(config, FLAGS.workdir)


USAGE = """python -m instructor_jax.train --config configs/NAME.py[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]

Trains an INSTRUCTOR embedder; rerunning the same command resumes. Configs: demo.py (tiny, bundled data),
instructor_base.py / instructor_large.py / instructor_xl.py (the paper recipe; variants v4-32, v5e-64, gpu8),
quality_minilm.py. Every config key can be overridden with --config.KEY=VALUE; --print_config lists them with
their values. --compile_only compiles the step for the config's mesh on fake CPU devices and reports memory per
device. README.md ("Training") and WORKSPACE.md describe the rest.
"""

if __name__ == "__main__":
  if any(a in ("-h", "--help", "--helpshort", "-?") for a in sys.argv[1:]):
    print(USAGE)
    print("flags:")
    print(FLAGS.module_help(sys.modules[__name__]))
    sys.exit(0)
  sys.exit(cli.run(lambda _: app.run(main, flags_parser=_parse_flags)))
