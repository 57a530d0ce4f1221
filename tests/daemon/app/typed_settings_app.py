"""A user module reading its own ``[app.typed_settings_app]`` section into a Struct:
the greeting actor it spawns answers with what the settings say."""

from __future__ import annotations

import msgspec

import fiefdom


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    """The module's settings: ``greeting`` is required, ``repeat`` is not."""

    greeting: str
    repeat: int = 1


class Greet(fiefdom.Request[str]):
    """The greeting, as configured."""


class Greeter(fiefdom.Actor[Greet]):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def receive(self, msg: Greet) -> str:
        return " ".join([self.settings.greeting] * self.settings.repeat)


async def setup(daemon: fiefdom.ModuleHost) -> None:
    settings = daemon.settings(Settings)
    daemon.log.info("settings read", section=daemon.section, raw=daemon.settings())
    greeter = await daemon.system.spawn(lambda: Greeter(settings), name="greeter")
    daemon.expose("greeter", greeter, [Greet])
