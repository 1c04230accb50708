"""Console hygiene for every entry point, switched from config (``extras``, fashionseg/conf/extras/): library
warnings, Lightning's tips and its doubled log lines off, so that a run's console shows what matters."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


class DropLightningTips(logging.Filter):
    """Drop Lightning's advertising lines ("Tip: For seamless cloud logging ... try installing litlogger")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in str(record.msg)


def apply_extras(extras: Mapping | None) -> None:
    """Apply ``extras`` (``ignore_warnings``, ``lightning_tips``, ``single_log_lines``) to this process."""
    if not extras:
        return
    if extras.get("ignore_warnings"):
        # Warnings raised from a library's code; those of fashionseg's own modules still show.
        warnings.filterwarnings("ignore", module=r"(?!fashionseg)")
    import lightning.pytorch  # noqa: F401  (it adds its console handlers on import: import first, then adjust)

    if extras.get("single_log_lines"):  # Hydra's handlers (console and the job's log) print them once
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # rank_zero_info logs the tips here
    if extras.get("lightning_tips") is False and not any(isinstance(f, DropLightningTips) for f in tips.filters):
        tips.addFilter(DropLightningTips())
