# A second door onto the same service tree:  CELLSD_CONFIG=cell.toml twistd -ny cellsd.tac
# The cell's configuration file comes from the environment; logging follows
# its [log] section.
import os

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import ILogObserver

from cellsd.config import load_settings
from cellsd.logs import make_observer
from cellsd.ops.reload import install_reload_on_signal
from cellsd.service import freeze_startup_objects, make_service

_config = os.environ.pop("CELLSD_CONFIG", None)
if not _config:
    raise SystemExit("cellsd.tac: set CELLSD_CONFIG to the cell's TOML file")
_settings = load_settings(_config)

application = service.Application(f"cellsd-{_settings.cell.name}")
application.setComponent(
    ILogObserver,
    make_observer(_settings.log.format, _settings.log.level, _settings.log.file),
)
_top = make_service(_settings, reactor)
install_reload_on_signal(_top, reactor)  # SIGHUP reloads the config file
_top.setServiceParent(application)
reactor.callWhenRunning(freeze_startup_objects)
