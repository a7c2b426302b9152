"""``twistd cellsd -c FILE``: options and service for the twistd plugin."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from cellsd.config import load_settings
from cellsd.errors import ConfigError


class Options(usage.Options):
    synopsis = "-c FILE"
    longdesc = "Run one cell of a cellsd tree, configured by a TOML file."
    optParameters = [["config", "c", None, "the cell's TOML configuration file"]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self["settings"] = load_settings(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"{self['config']}: {e}") from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from cellsd.ops.reload import install_reload_on_signal
    from cellsd.service import freeze_startup_objects, make_service

    service = make_service(options["settings"], reactor)
    install_reload_on_signal(service, reactor)  # SIGHUP reloads the config file
    reactor.callWhenRunning(freeze_startup_objects)
    return service
