"""The daemon: configuration, assembly of the store, the actor system with user
modules, the job engine and the control channel; signals; the flight recorder."""

from ._config import Config as Config
from ._config import load_config as load_config
from ._daemon import Daemon as Daemon
from ._logging import FlightRecorder as FlightRecorder
from ._modules import ModuleHost as ModuleHost
from ._tokens import ensure_admin_token as ensure_admin_token
from ._tokens import read_token_file as read_token_file
from ._tokens import token_table as token_table

__all__ = [
    "Config",
    "Daemon",
    "FlightRecorder",
    "ModuleHost",
    "ensure_admin_token",
    "load_config",
    "read_token_file",
    "token_table",
]
